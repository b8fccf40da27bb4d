"""Several GPUs in one pod: a device worker for each, versions placed by memory.

Two fake GPUs (``cpu:0`` and ``cpu:1`` devices, each with its own fake
allocator from ``tests.runtime.fakemem``) stand in for CUDA devices; the
requests go through the runtime's HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from modelfleet.api.admin import ActualState
from modelfleet.runtime.admin import held
from modelfleet.runtime.config import ServerConfig, parse_document
from modelfleet.runtime.device import DeviceWorker
from modelfleet.runtime.executor import Executor
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.multidevice import DeviceWorkers
from modelfleet.runtime.runtime import Runtime
from tests.runtime import fakemem
from tests.runtime.conftest import StartRuntime, infer_body, tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[fakemem.FakeDeviceMemory]]:
    """Runtimes started in this test get two fake GPUs."""
    memories = [fakemem.FakeDeviceMemory(), fakemem.FakeDeviceMemory()]

    def build(config: ServerConfig, metrics: RuntimeMetrics, cpus: set[int] | None) -> Executor:
        return DeviceWorkers([
            DeviceWorker(torch.device("cpu", i), metrics, aging_ms=0.0, memory=memories[i])
            for i in range(2)
        ])  # fmt: skip

    monkeypatch.setattr("modelfleet.runtime.runtime.build_executor", build)
    yield memories


def weighted(name: str, mb: float, factory: str = "weighted") -> dict[str, Any]:
    return tiny_model(name, factory, architecture=f"tests.runtime.fakemem:{factory}",
                      architecture_kwargs={"mb": mb}, memory_mb=mb)  # fmt: skip


def state(runtime: Runtime) -> ActualState:
    return ActualState.model_validate(held(runtime).model_dump(mode="json"))


async def test_each_version_goes_to_the_gpu_whose_versions_hold_the_least_memory(
    start_runtime: StartRuntime, two_gpus: list[fakemem.FakeDeviceMemory]
) -> None:
    configs = [weighted("a", 8), weighted("b", 4), weighted("c", 2), weighted("d", 1)]
    _, runtime = await start_runtime(configs[:1])
    for config in parse_document({"models": configs[1:]}).models:  # one at a time: b, c, d
        await runtime.repository.apply((*runtime.repository.desired, config), wait=True)
    gpus = state(runtime).devices
    assert [(g.device, g.models, g.memory_in_use_mb) for g in gpus] == [
        ("cpu:0", ("a:1",), 8.0),
        ("cpu:1", ("b:1", "c:1", "d:1"), 7.0),
    ]
    by_name = {v.name: v.device for v in state(runtime).models}
    assert by_name == {"a": "cpu:0", "b": "cpu:1", "c": "cpu:1", "d": "cpu:1"}


async def test_every_gpu_serves_its_own_versions_and_reports_its_own_memory(
    start_runtime: StartRuntime, two_gpus: list[fakemem.FakeDeviceMemory]
) -> None:
    client, runtime = await start_runtime([weighted("a", 8), weighted("b", 4)])
    two_gpus[0].allocate(3 * fakemem.MiB)  # what the fake GPU 0 holds beside the runtime
    for name in ("a", "b"):
        resp = await client.post(f"/v2/models/{name}/infer", json=infer_body("x", [1] * 4, [1, 4]))
        assert resp.status == 200, await resp.text()
    executor = runtime.worker
    assert isinstance(executor, DeviceWorkers)
    a, b = (runtime.repository.models[(n, "1")] for n in ("a", "b"))
    assert {a.worker, b.worker} == set(executor.workers)  # one on each GPU
    gpus = {g.device: g for g in state(runtime).devices}
    assert gpus["cpu:0"].allocated_mb == 3.0 and gpus["cpu:1"].allocated_mb == 0.0


async def test_loads_on_two_gpus_run_at_the_same_time(
    start_runtime: StartRuntime, two_gpus: list[fakemem.FakeDeviceMemory]
) -> None:
    fakemem.TOGETHER = threading.Barrier(2, timeout=10)  # each load waits for the other
    _, runtime = await start_runtime(
        [weighted("left", 2, "together"), weighted("right", 2, "together")]
    )
    assert not runtime.repository.failed, {
        k: m.reason for k, m in runtime.repository.failed.items()
    }
    assert sorted(g.models for g in state(runtime).devices) == [("left:1",), ("right:1",)]


async def test_an_unloaded_version_frees_its_place_on_its_gpu(
    start_runtime: StartRuntime, two_gpus: list[fakemem.FakeDeviceMemory]
) -> None:
    _, runtime = await start_runtime([weighted("a", 8)])
    await runtime.repository.apply((), wait=True)
    executor = runtime.worker
    assert isinstance(executor, DeviceWorkers)
    assert [executor.held(w) for w in executor.workers] == [0, 0]
    assert [g.models for g in state(runtime).devices] == [(), ()]
