"""On a CUDA device: footprints measured, memory returned after unload (and a leak
flagged), an out-of-memory batch contained. Run by ``make gpu-check``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modelfleet.api.admin import ActualState
from modelfleet.runtime.admin import held
from modelfleet.runtime.loader import module_bytes
from modelfleet.runtime.runtime import Runtime
from tests.gpu import models
from tests.runtime.conftest import StartRuntime, infer_body

MiB = 1024 * 1024
WIDTH = 2048


def model(name: str, factory: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": "empty.safetensors",
        "format": "safetensors",
        "architecture": f"tests.gpu.models:{factory}",
        "architecture_kwargs": kwargs,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 1},
    }


def wide(name: str, factory: str = "wide") -> dict[str, Any]:
    config = model(name, factory, width=WIDTH)
    config["source"] = f"{name}.safetensors"
    return config


@pytest.fixture
def wide_store(model_store: Any) -> Any:
    """Weights of the ``wide`` test models in the model store."""
    from safetensors.torch import save_file

    for name in ("wide", "drip"):
        save_file(models.wide(WIDTH).state_dict(), str(model_store / f"{name}.safetensors"))
    return model_store


def state(runtime: Runtime) -> ActualState:
    return held(runtime)


async def test_warmup_measures_weights_and_the_peak_at_each_batch_size(
    start_runtime: StartRuntime, wide_store: Any
) -> None:
    _, runtime = await start_runtime([wide("wide")], device="cuda")
    version = state(runtime).models[0]
    weights = module_bytes(models.wide(WIDTH)) / MiB
    assert version.weights_mb is not None and weights <= version.weights_mb < weights + 2
    by_batch = version.peak_working_mb_by_batch or {}
    assert sorted(by_batch) == [1, 2, 4, 8, 16, 32, 64], by_batch
    # the first pass of a device thread also allocates cuBLAS's workspace: it counts in
    # the smallest batch's peak, so the growth is checked from 2 rows on
    assert by_batch[64] > by_batch[2] > 0
    assert version.peak_working_mb == max(by_batch.values())
    print(f"wide ({WIDTH}): weights {version.weights_mb} MiB, peak working {by_batch} MiB")


async def test_unload_returns_the_memory_to_the_driver(
    start_runtime: StartRuntime, wide_store: Any
) -> None:
    small = model("small", "greedy", above=1 << 20)
    _, runtime = await start_runtime([small, wide("wide")], device="cuda")
    weights = module_bytes(models.wide(WIDTH))
    allocated_before = torch.cuda.memory_allocated()
    reserved_before = torch.cuda.memory_reserved()
    keep = tuple(c for c in runtime.repository.desired if c.name == "small")
    await runtime.repository.apply(keep, wait=True)
    actual = state(runtime)
    assert actual.leaked == ()
    assert allocated_before - torch.cuda.memory_allocated() >= weights - MiB
    assert actual.reserved_after_unload_mb is not None
    assert actual.reserved_after_unload_mb * MiB <= reserved_before - weights + 4 * MiB
    print(f"reserved: {reserved_before / MiB:.1f} MiB before unload, "
          f"{actual.reserved_after_unload_mb} MiB after (weights {weights / MiB:.1f} MiB)")  # fmt: skip


async def test_a_version_that_keeps_its_tensors_is_flagged_as_leaking(
    start_runtime: StartRuntime, wide_store: Any
) -> None:
    _, runtime = await start_runtime([wide("drip", "leaky")], device="cuda")
    await runtime.repository.apply((), wait=True)
    leaked = state(runtime).leaked
    weights = module_bytes(models.wide(WIDTH)) / MiB
    assert [v.name for v in leaked] == ["drip"] and leaked[0].leaked_mb >= weights - 1
    models.KEPT.clear()


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_real_out_of_memory_fails_the_batch_with_503_and_nothing_else(
    start_runtime: StartRuntime, wide_store: Any, executor: str
) -> None:
    greedy = model("greedy", "greedy", above=2)
    greedy["warmup"] = {"batch_sizes": [1, 2]}
    client, runtime = await start_runtime([greedy, wide("wide")], device="cuda", executor=executor)
    big = infer_body("x", [0.0] * 16, [4, 4])
    resp = await client.post("/v2/models/greedy/infer", json=big)
    body = await resp.json()
    assert resp.status == 503, body
    assert "model 'greedy' version '1' could not run a batch of 4 rows" in body["error"]
    for name in ("wide", "greedy"):
        ok = await client.post(f"/v2/models/{name}/infer", json=infer_body("x", [0.0] * 4, [1, 4]))
        assert ok.status == 200, await ok.text()
    assert runtime.is_ready() and runtime.forward_process_failure() is None


async def test_two_gpus_each_hold_and_serve_their_own_versions(
    start_runtime: StartRuntime, wide_store: Any
) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip(f"one GPU here ({torch.cuda.get_device_name(0)}): the two-GPU case needs two")
    from modelfleet.runtime.multidevice import DeviceWorkers

    client, runtime = await start_runtime([wide("wide"), wide("drip")], device="cuda")
    assert isinstance(runtime.worker, DeviceWorkers)
    devices = {g.device: g.models for g in state(runtime).devices}
    assert devices["cuda:0"] and devices["cuda:1"], devices
    for name in ("wide", "drip"):
        ok = await client.post(f"/v2/models/{name}/infer", json=infer_body("x", [0.0] * 4, [1, 4]))
        assert ok.status == 200, await ok.text()
    await runtime.repository.apply((), wait=True)
    models.KEPT.clear()
