"""The express lane (``server.express_lane``, on by default on CPU devices): a batch
of a strictly higher class runs beside a lower one in progress instead of waiting
for it to end. Sleeping test models make the batch in progress long (300 ms) and
leave the CPU free, so the difference is in the hundreds of milliseconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.runtime.conftest import StartRuntime, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
LONG_MS = 300


def slow(name: str, priority: int, delay_ms: float) -> dict[str, Any]:
    return tiny_model(
        name, "slow", priority=priority, architecture_kwargs={"delay_ms": delay_ms},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
    )  # fmt: skip


async def during_a_long_batch(
    start_runtime: StartRuntime,
    models: list[dict[str, Any]],
    model: str,
    body: dict[str, Any] = BODY,
    **server: Any,
) -> tuple[float, Any, dict[str, Any]]:
    """Starts a ``LONG_MS`` batch of the model ``long``, then times one request for
    ``model`` sent while it runs: (milliseconds, the runtime, its answer's outputs by name)."""
    client, runtime = await start_runtime(models, **server)
    worker: Any = runtime.worker
    long_model = runtime.repository.models[("long", "1")]
    served_before = long_model.served
    long_one = asyncio.ensure_future(client.post("/v2/models/long/infer", json=BODY))
    await wait_until("the long batch to start", lambda: worker._busy_batches == 1, 5.0)
    started = time.perf_counter()
    resp = await client.post(f"/v2/models/{model}/infer", json=body)
    ms = (time.perf_counter() - started) * 1000
    assert resp.status == 200, await resp.text()
    outputs = {o["name"]: o["data"] for o in (await resp.json())["outputs"]}
    assert (await long_one).status == 200
    assert long_model.served >= served_before + 1
    return ms, runtime, outputs


EXECUTORS = pytest.mark.parametrize("executor", ["thread", "process"])
"""The lane is a second device thread (thread), or a second thread of the forward
process fed by a pipe of its own (process)."""


@EXECUTORS
async def test_a_higher_priority_model_runs_beside_a_lower_batch_in_progress(
    start_runtime: StartRuntime, executor: str
) -> None:
    models = [slow("long", 10, LONG_MS), slow("high", 100, 5)]
    ms, runtime, _ = await during_a_long_batch(start_runtime, models, "high", executor=executor)
    assert ms < LONG_MS / 2, f"the high request waited {ms:.0f} ms for the low batch"
    assert runtime.worker.express  # type: ignore[attr-defined]


@EXECUTORS
async def test_without_the_lane_the_higher_model_waits_for_the_batch_in_progress(
    start_runtime: StartRuntime, executor: str
) -> None:
    models = [slow("long", 10, LONG_MS), slow("high", 100, 5)]
    ms, runtime, _ = await during_a_long_batch(
        start_runtime, models, "high", express_lane=False, executor=executor
    )
    assert ms > LONG_MS / 2, f"the high request took only {ms:.0f} ms without the lane"
    assert not runtime.worker.express  # type: ignore[attr-defined]


@EXECUTORS
async def test_a_request_priority_of_the_same_model_takes_the_lane(
    start_runtime: StartRuntime, executor: str
) -> None:
    """Its own batch takes ``LONG_MS`` too: without the lane it would take twice that."""
    urgent = {**BODY, "parameters": {"priority": 1}}
    ms, _, _ = await during_a_long_batch(
        start_runtime, [slow("long", 0, LONG_MS)], "long", urgent, executor=executor
    )
    assert ms < 1.5 * LONG_MS, f"the urgent request waited {ms:.0f} ms for the batch in progress"


@EXECUTORS
@pytest.mark.parametrize("express", [True, False])
async def test_the_lane_runs_at_the_event_loops_cpu_priority(
    start_runtime: StartRuntime, executor: str, express: bool
) -> None:
    """With ``forward_nice``, forward passes run below the event loop, but not the express
    lane's: its batches are of a higher class than the one running, and at nice 10 on
    a CPU shared with a busy loop it gets a ninth of it. The probe answers the nice of
    the thread that ran it: 0 on the lane, 10 behind the batch in progress without it."""
    models = [slow("long", 10, LONG_MS), tiny_model("probe", "nice_probe", priority=100)]
    _, _, outputs = await during_a_long_batch(
        start_runtime, models, "probe", executor=executor, express_lane=express,
        forward_nice=10, torch_threads=1,
    )  # fmt: skip
    assert outputs["y"] == ([0.0] * 4 if express else [10.0] * 4), outputs


@EXECUTORS
async def test_an_urgent_request_takes_the_lane_without_the_default_rows_queued_with_it(
    start_runtime: StartRuntime, executor: str
) -> None:
    """Batches of up to 4: while a ``LONG_MS`` batch runs, three default-level requests
    wait behind it; an urgent one (priority 1) of the same model then runs beside it,
    alone. Had those queued joined its express batch, they would be answered with it,
    ahead of their turn and behind nothing."""
    model = tiny_model(
        "long", "slow", priority=10, architecture_kwargs={"delay_ms": LONG_MS},
        batching={"max_batch_size": 4, "max_queue_delay_ms": 0},
    )  # fmt: skip
    client, runtime = await start_runtime([model], executor=executor)
    worker: Any = runtime.worker
    running = asyncio.ensure_future(client.post("/v2/models/long/infer", json=BODY))
    await wait_until("the long batch to start", lambda: worker._busy_batches >= 1, 5.0)

    async def answered_at() -> float:
        resp = await client.post("/v2/models/long/infer", json=BODY)
        assert resp.status == 200, await resp.text()
        return time.perf_counter()

    queued = [asyncio.ensure_future(answered_at()) for _ in range(3)]
    hosted = runtime.repository.models[("long", "1")]
    behind = 3 if executor == "thread" else 2  # the process's second slot takes one
    await wait_until("the requests queued", lambda: len(hosted.queue) == behind, 5.0)
    urgent = await client.post(
        "/v2/models/long/infer", json={**BODY, "parameters": {"priority": 1}}
    )
    assert urgent.status == 200, await urgent.text()
    urgent_at = time.perf_counter()
    # Theirs come a batch later, after the long batch, not with the urgent one.
    first_ms = (min(await asyncio.gather(*queued)) - urgent_at) * 1000
    assert first_ms > LONG_MS / 2, f"default-level rows rode the express batch ({first_ms:.0f} ms)"
    assert (await running).status == 200


@EXECUTORS
async def test_an_equal_class_does_not_take_the_lane(
    start_runtime: StartRuntime, executor: str
) -> None:
    models = [slow("long", 10, LONG_MS), slow("peer", 10, 5)]
    ms, _, _ = await during_a_long_batch(start_runtime, models, "peer", executor=executor)
    assert ms > LONG_MS / 2, (
        f"a model of equal priority overtook the batch in progress ({ms:.0f} ms)"
    )


async def test_an_unload_waits_for_the_express_batch_and_serving_goes_on(
    start_runtime: StartRuntime,
) -> None:
    """A job on the device thread (here the memory check of an unload) never runs beside an
    express batch: the express batch in progress ends first, with its answer."""
    client, runtime = await start_runtime([slow("long", 10, LONG_MS), slow("high", 100, 500)])
    worker: Any = runtime.worker
    long_one = asyncio.ensure_future(client.post("/v2/models/long/infer", json=BODY))
    await wait_until("the long batch to start", lambda: worker._busy_batches == 1, 5.0)
    high = asyncio.ensure_future(client.post("/v2/models/high/infer", json=BODY))
    await wait_until("the express batch to start", lambda: worker._busy_batches == 2, 5.0)
    # The long batch ends at 300 ms, the express one (500 ms) only after it: the job,
    # queued now, runs after both, when no batch is in progress.
    in_progress = await worker.run_on_device(lambda: worker._busy_batches)
    assert in_progress == 0, f"the job ran beside {in_progress} batch(es)"
    assert (await high).status == 200 and (await long_one).status == 200
