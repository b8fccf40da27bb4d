"""Priority under overload, with a model that sleeps (so the device, not the CPU,
is the bottleneck and the test holds on a 2-CPU machine): high priority is not
queued behind a low-priority backlog, and what cannot be served in time is
refused at once and never run."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.runtime.conftest import StartRuntime, batch_stats, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def slow(name: str, priority: int, delay_ms: float = 20, **extra: Any) -> dict[str, Any]:
    """One request at a time, ``delay_ms`` each: about 1000 / delay_ms requests/s."""
    return tiny_model(
        name, "slow", priority=priority, architecture_kwargs={"delay_ms": delay_ms},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 400, "timeout_ms": 30_000}, **extra,
    )  # fmt: skip


async def timed(client: Any, model: str, body: dict[str, Any] = BODY,
                headers: dict[str, str] | None = None) -> tuple[int, float, Any]:  # fmt: skip
    t0 = time.perf_counter()
    resp = await client.post(f"/v2/models/{model}/infer", json=body, headers=headers)
    doc = await resp.json()
    return resp.status, (time.perf_counter() - t0) * 1000, (doc, resp.headers)


async def wait_for_backlog(runtime: Any, model: str, depth: int) -> None:
    queue = runtime.repository.models[(model, "1")].queue
    await wait_until(f"a backlog of {depth} for {model}", lambda: len(queue) >= depth, 5.0)


async def test_a_high_priority_model_is_not_queued_behind_a_low_priority_backlog(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([slow("low", 10), slow("high", 100, delay_ms=5)])
    unloaded = [(await timed(client, "high"))[1] for _ in range(5)]
    backlog = [asyncio.ensure_future(timed(client, "low")) for _ in range(100)]  # ~2 s of work
    await wait_for_backlog(runtime, "low", 50)
    loaded = [await timed(client, "high") for _ in range(10)]
    assert all(status == 200 for status, _, _ in loaded)
    # Bound: the unloaded latency plus one low batch (20 ms) plus slack for a busy CI host.
    worst = max(ms for _, ms, _ in loaded)
    assert worst < 2 * max(unloaded) + 20 + 60, (unloaded, [ms for _, ms, _ in loaded])
    assert len(runtime.repository.models[("low", "1")].queue) > 20, "the backlog was still there"
    for task in backlog:
        task.cancel()


async def test_a_request_priority_jumps_a_backlog_of_the_same_model(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([slow("m", 0)])
    backlog = [asyncio.ensure_future(timed(client, "m")) for _ in range(100)]
    await wait_for_backlog(runtime, "m", 50)
    urgent = {**BODY, "parameters": {"priority": 1}}
    results = [await timed(client, "m", urgent) for _ in range(5)]
    assert all(status == 200 for status, _, _ in results)
    assert max(ms for _, ms, _ in results) < 20 + 20 + 80, [ms for _, ms, _ in results]
    for task in backlog:
        task.cancel()


async def test_a_request_whose_deadline_cannot_be_met_is_refused_at_once_and_never_run(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([slow("m", 0)])
    model = runtime.repository.models[("m", "1")]
    backlog = [asyncio.ensure_future(timed(client, "m")) for _ in range(40)]  # ~0.8 s
    await wait_for_backlog(runtime, "m", 30)
    batches_before, _ = batch_stats(runtime, "m")
    hurried = {**BODY, "parameters": {"timeout": 100_000}}  # Triton: 100 ms, in µs
    status, ms, (doc, headers) = await timed(client, "m", hurried)
    assert status == 503 and ms < 50, (status, ms, doc)
    assert "cannot answer within the request's deadline: 100 ms left" in doc["error"]
    assert int(headers["Retry-After"]) >= 1
    # Through the gateway's header, before the body is even read: refused the same way.
    status, ms, (doc, _) = await timed(client, "m", headers={"X-ModelFleet-Timeout-Us": "50000"})
    assert status == 503 and ms < 50
    await asyncio.gather(*backlog)
    executed = batch_stats(runtime, "m")[0] - batches_before
    assert executed <= len(backlog), "a refused request was run"
    assert model.served == len(backlog)
    metrics = await (await client.get("/metrics")).text()
    assert 'modelfleet_shed_total{model="m",priority="5",reason="deadline",version="1"} 2.0' in (
        metrics
    )


async def test_a_full_queue_refuses_low_priority_fast_while_the_device_is_busy(
    start_runtime: StartRuntime,
) -> None:
    # 400 ms a request, one on the device and a queue of 10 behind it: the device
    # stays busy for about 4 s. Of the 11 sent at once, one may be refused already
    # (all 11 queued before the first batch started); while the refusals below are
    # sent a queue slot frees up once or twice: at most three of them are let in.
    config = slow("low", 0, delay_ms=400)
    config["queue"] = {"max_size": 10, "timeout_ms": 30_000}
    client, runtime = await start_runtime([config])
    backlog = [asyncio.ensure_future(timed(client, "low")) for _ in range(11)]
    await wait_for_backlog(runtime, "low", 9)
    # One at a time, so each figure is what one refused client waits, not the
    # tail of a burst the test itself queued in front of the event loop. One let in
    # (a slot freed up) waits its turn with the backlog: the next goes after 0.15 s.
    attempts = []
    for _ in range(20):
        attempts.append(asyncio.ensure_future(timed(client, "low")))
        await asyncio.wait({attempts[-1]}, timeout=0.15)
    assert not all(task.done() for task in backlog), "refused only after the backlog drained"
    answers = await asyncio.gather(*attempts)
    first = await asyncio.gather(*backlog)
    refusals = [ms for status, ms, _ in answers if status == 503]
    assert len(refusals) >= 16, [(status, round(ms, 1)) for status, ms, _ in answers]
    assert max(refusals) < 50, [round(ms, 1) for ms in refusals]
    assert sum(status == 503 for status, _, _ in first) <= 1
    metrics = await (await client.get("/metrics")).text()
    assert 'reason="queue_full"' in metrics and "modelfleet_admitted_total" in metrics
    from modelfleet.runtime.admin import describe

    state = describe(runtime.repository.models[("low", "1")])  # what the operator reads
    shed = len(refusals) + sum(status == 503 for status, _, _ in first)
    assert state["shed"] == shed and state["errors"] >= state["shed"]


async def test_the_admin_state_counts_answers_within_and_past_the_latency_objective(
    start_runtime: StartRuntime,
) -> None:
    # 30 ms a request, one at a time, objective 55 ms: alone a request meets it; of
    # four sent at once, the first meets it and the later ones, queued behind, miss.
    client, runtime = await start_runtime([slow("slo", 10, delay_ms=30, latency_objective_ms=55)])
    from modelfleet.runtime.admin import describe

    assert (await timed(client, "slo"))[0] == 200
    results = await asyncio.gather(*(timed(client, "slo") for _ in range(4)))
    assert [status for status, _, _ in results] == [200] * 4
    state = describe(runtime.repository.models[("slo", "1")])  # what the operator reads
    assert state["objective_met"] + state["objective_missed"] == 5 == state["served"]
    assert state["objective_met"] >= 1 and state["objective_missed"] >= 2
    metrics = await (await client.get("/metrics")).text()
    assert "modelfleet_objective_total{" in metrics


@pytest.mark.parametrize("between", ["models", "request priorities"])
async def test_at_twice_its_capacity_low_keeps_its_goodput_and_high_its_latency(
    serve: Any, between: str
) -> None:
    """A runtime process, open-loop Poisson load on loopback (one connection a request):
    a low class at twice its measured capacity beside a steady high class. The high
    class's p99 stays within 2x its unloaded p99 plus one low batch (10 ms), with 25 ms
    allowed for a busy 2-CPU host, and every request of it succeeds; the low class's
    refusals come in under 50 ms (p99), none after waiting out its deadline, and the
    device keeps 90% of its capacity busy with answers (the low class's goodput, plus
    the device time the high class took).
    ``between``: two models (priority 100 and 10), or one model and Triton's request
    ``priority`` parameter (1 against the default level). The capacity is measured
    first, closed loop (below the 100 requests/s of 10 ms sleeps: each batch also
    costs the device thread its hand-offs). One stall of a busy 2-CPU host can put two
    of the ~125 high requests past the bound (seen once in ten runs: 190 ms against 49):
    the loaded run is repeated once then, and a real regression fails both. The same
    for the refusals' p99 (90.6 ms once in three clean-clone CI runs of one day, with
    every other property held)."""
    from bench.loadgen import closed_loop
    from bench.overload import Traffic, run_classes

    low_model = {**slow("low", 10, delay_ms=10), "queue": {"max_size": 400, "timeout_ms": 1500}}
    models = [low_model] if between != "models" else [low_model, slow("high", 100, delay_ms=2)]
    server = serve(models)
    base = f"http://127.0.0.1:{server.port}/v2/models"
    plain = json.dumps(BODY).encode()
    urgent = json.dumps({**BODY, "parameters": {"priority": 1}}).encode()
    high = (Traffic("high", 25, [plain], {}, f"{base}/high/infer") if between == "models"
            else Traffic("high", 25, [urgent], {}, f"{base}/low/infer"))  # fmt: skip
    alone = (await run_classes([high], 3.0, warmup_s=0.5))["high"]
    capacity = (await closed_loop(f"{base}/low/infer", plain, {}, 4, 2.0)).throughput
    low = Traffic("low", 2 * capacity, [plain], {}, f"{base}/low/infer")
    bound = 2 * alone.p(99) + 10 + 25
    for attempt in range(2):  # a second run only when a stall of the host broke the first
        seen = await run_classes([high, low], 5.0, warmup_s=2.0, seed=attempt)
        h, lo = seen["high"], seen["low"]
        if h.p(99) <= bound and lo.shed_p(99) < 50:
            break
        print(f"high p99 {h.p(99):.1f} ms (bound {bound:.1f}), refusals p99 "
              f"{lo.shed_p(99):.1f} ms (bound 50) in run {attempt + 1}: once more")  # fmt: skip
    assert h.ok == h.sent and h.sent > 60, (h.sent, h.ok, h.shed, h.errors, h.timeouts)
    assert h.p(99) <= bound, f"high p99 {h.p(99):.1f} ms > {bound:.1f} (unloaded {alone.p(99):.1f})"
    assert lo.shed > 0.3 * lo.sent and lo.errors == 0 and lo.timeouts == 0, vars(lo)
    assert lo.shed_p(99) < 50, f"refusals took {lo.shed_p(99):.1f} ms (p99)"
    # The device time the high class took is not the low class's to lose: a high
    # request costs a fifth of a low one (2 ms against 10), or as much (one model).
    cost = 0.2 if between == "models" else 1.0
    used = lo.goodput + cost * h.goodput
    assert used >= 0.9 * capacity, (
        f"goodput {lo.goodput:.1f}/s low + {h.goodput:.1f}/s high (x{cost:g}) of {capacity:.1f}/s"
    )


async def test_a_request_refused_once_its_body_is_read_does_not_wake_the_device_thread(
    start_runtime: StartRuntime,
) -> None:
    """The arrivals count settling with nothing queued wakes no one: a refusal under
    overload then costs the event loop no switch to the device thread and back. With
    requests queued, the last arrival settling still wakes it (eager batching)."""
    client, runtime = await start_runtime([slow("m", 0)])
    worker: Any = runtime.worker
    wakes: list[str] = []
    real_wake = worker._wake

    def counting_wake(model: Any) -> None:
        wakes.append(model.config.name)
        real_wake(model)

    worker._wake = counting_wake
    hurried = {**BODY, "parameters": {"timeout": 1}}  # 1 µs: refused once its body is read
    for _ in range(3):
        status, _, (doc, _) = await timed(client, "m", hurried)
        assert status == 503, doc
    assert wakes == [], "a refused request woke the device thread"
    status, _, _ = await timed(client, "m")
    assert status == 200
    assert wakes, "a queued request did not wake the device thread"
