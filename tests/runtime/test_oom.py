"""A forward pass that runs out of device memory fails its batch with 503 (or is
split and retried once) and nothing else: the process and the other models go on.

The error is CUDA's own (``torch.cuda.OutOfMemoryError``), raised by a test
architecture on the CPU (``tests.runtime.fakemem:hungry``); the requests go
through the runtime's HTTP server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelfleet.runtime.runtime import Runtime
from tests.runtime.conftest import StartRuntime, infer_body, tiny_model

pytestmark = pytest.mark.integration


def greedy(oom_above: int = 2, delay_ms: float = 1, **overrides: Any) -> dict[str, Any]:
    """Runs out of device memory on batches of more than ``oom_above`` rows."""
    return tiny_model(
        "greedy",
        "hungry",
        architecture="tests.runtime.fakemem:hungry",
        architecture_kwargs={"oom_above": oom_above},
        batching={"max_batch_size": 8, "max_queue_delay_ms": delay_ms, "eager": False},
        warmup={"batch_sizes": [1, 2]},
        **overrides,
    )


def rows(n: int) -> dict[str, Any]:
    return infer_body("x", [float(i) for i in range(4 * n)], [n, 4])


def out_of_memory_count(runtime: Runtime) -> float:
    return sum(
        s.value
        for metric in runtime.metrics.registry.collect()
        for s in metric.samples
        if s.name == "modelfleet_out_of_memory_total" and s.labels.get("model") == "greedy"
    )


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_batch_out_of_device_memory_fails_with_503_and_other_models_keep_answering(
    start_runtime: StartRuntime, executor: str
) -> None:
    client, runtime = await start_runtime(
        [greedy(), tiny_model("other", "identity")], executor=executor
    )
    resp = await client.post("/v2/models/greedy/infer", json=rows(4))
    body = await resp.json()
    assert resp.status == 503, body
    assert body["error"].startswith(
        "out of device memory: model 'greedy' version '1' could not run a batch of 4 rows;"
    )
    assert resp.headers["Retry-After"] == "1"
    other = await client.post("/v2/models/other/infer", json=rows(3))
    assert other.status == 200, await other.text()
    assert (await other.json())["outputs"][0]["data"] == [float(i) for i in range(12)]
    again = await client.post("/v2/models/greedy/infer", json=rows(1))
    assert again.status == 200, await again.text()  # the model itself still serves
    assert runtime.is_ready() and runtime.forward_process_failure() is None
    if executor == "thread":
        assert out_of_memory_count(runtime) == 1


async def test_a_batch_of_several_requests_out_of_memory_is_split_and_each_half_answered(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([greedy(oom_above=2, delay_ms=300)])
    resps = await asyncio.gather(
        *(client.post("/v2/models/greedy/infer", json=rows(1)) for _ in range(4))
    )
    assert [r.status for r in resps] == [200] * 4
    assert out_of_memory_count(runtime) == 1  # the batch of 4 ran out; its halves of 2 did not


async def test_a_half_that_runs_out_again_fails_with_503_and_the_other_half_is_answered(
    start_runtime: StartRuntime,
) -> None:
    client, runtime = await start_runtime([greedy(oom_above=2, delay_ms=300)])
    small = [
        asyncio.ensure_future(client.post("/v2/models/greedy/infer", json=rows(1)))
        for _ in range(2)
    ]
    await asyncio.sleep(0.05)  # queued after the small ones: the halves are [1, 1] and [3]
    big = client.post("/v2/models/greedy/infer", json=rows(3))  # alone, 3 rows run out again
    resps = await asyncio.gather(*small, big)
    statuses = [r.status for r in resps]
    assert statuses == [200, 200, 503], [await r.text() for r in resps]
    assert "after its batch was split in two" in (await resps[2].json())["error"]
    assert out_of_memory_count(runtime) == 2


async def test_a_model_out_of_memory_in_warmup_fails_to_load_and_says_so(
    start_runtime: StartRuntime,
) -> None:
    config = greedy(oom_above=2)
    config["warmup"] = {"batch_sizes": [1, 4]}
    client, runtime = await start_runtime([config, tiny_model("other", "identity")])
    failed = runtime.repository.failed[("greedy", "1")]
    assert failed.reason == (
        "model 'greedy' version '1' ran out of device memory warming up a batch of 4 rows: "
        "lower batching.max_batch_size or give it more memory"
    )
    resp = await client.post("/v2/models/other/infer", json=rows(1))
    assert resp.status == 200
