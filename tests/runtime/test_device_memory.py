"""Device memory measured, and given back: the runtime's accounting against a fake
CUDA allocator (``tests.runtime.fakemem``), and the CPU's honest "not measured"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from modelfleet.api.admin import ActualState
from modelfleet.runtime.admin import held
from modelfleet.runtime.device import DeviceWorker
from modelfleet.runtime.devicemem import (
    LEAK_TOLERANCE_BYTES,
    Footprint,
    Ledger,
    Unmeasured,
    device_memory,
)
from modelfleet.runtime.runtime import Runtime
from tests.runtime import fakemem
from tests.runtime.conftest import StartRuntime, infer_body, tiny_model

MiB = 1024 * 1024


@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakemem.FakeDeviceMemory]:
    """Runtimes started in this test measure the fake device's allocator."""
    fakemem.FAKE.reset()
    fakemem.KEPT.clear()
    monkeypatch.setattr("modelfleet.runtime.device.device_memory", lambda device: fakemem.FAKE)
    yield fakemem.FAKE
    fakemem.KEPT.clear()


def hungry(name: str, factory: str = "hungry", **kwargs: Any) -> dict[str, Any]:
    return tiny_model(
        name,
        factory,
        source="empty.safetensors",
        architecture=f"tests.runtime.fakemem:{factory}",
        architecture_kwargs=kwargs,
        batching={"max_batch_size": 8, "max_queue_delay_ms": 1},
    )


def sample(runtime: Runtime, name: str, **labels: str) -> float | None:
    for metric in runtime.metrics.registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def state(runtime: Runtime) -> ActualState:
    return ActualState.model_validate(held(runtime).model_dump(mode="json"))  # as sent


# -- the device layer ------------------------------------------------------------------


def test_the_cpu_reports_its_memory_as_not_measured() -> None:
    memory = device_memory(torch.device("cpu"))
    assert isinstance(memory, Unmeasured) and not memory.measured
    assert (memory.allocated(), memory.reserved(), memory.peak_allocated()) == (None,) * 3


def test_a_warmup_pass_during_another_load_is_not_used_for_the_peak() -> None:
    fake = fakemem.FakeDeviceMemory()
    ledger = Ledger(fake)
    footprint = Footprint()

    def pass_of(size: int) -> None:
        fake.allocate(size)
        fake.free(size)

    ledger.measure_pass(footprint, 4, lambda: pass_of(4 * MiB))
    ledger.load_began()
    ledger.measure_pass(footprint, 8, lambda: pass_of(100 * MiB))  # another load runs
    ledger.load_ended()
    assert footprint.peak_by_batch == {4: 4 * MiB}


def test_weights_come_from_the_allocator_only_when_no_other_load_ran() -> None:
    ledger = Ledger(fakemem.FakeDeviceMemory())
    assert ledger.weights(10 * MiB, 30 * MiB, tensors=16 * MiB, quiet=True) == 20 * MiB
    assert ledger.weights(10 * MiB, 30 * MiB, tensors=16 * MiB, quiet=False) == 16 * MiB
    assert ledger.weights(None, None, tensors=16 * MiB, quiet=True) == 16 * MiB


def test_an_unload_within_the_tolerance_is_not_a_leak() -> None:
    fake = fakemem.FakeDeviceMemory()
    ledger = Ledger(fake)
    footprint = Footprint(weights_bytes=8 * MiB)
    fake.allocate(8 * MiB)
    check = ledger.check_unload(
        ("m", "1"), footprint, 8 * MiB, lambda: fake.free(8 * MiB - LEAK_TOLERANCE_BYTES)
    )
    assert check is not None and check.leaked_bytes == 0 and ledger.leaks() == []


def test_an_unload_during_a_load_is_not_judged() -> None:
    fake = fakemem.FakeDeviceMemory()
    ledger = Ledger(fake)
    footprint = Footprint(weights_bytes=8 * MiB)
    fake.allocate(8 * MiB)
    ledger.load_began()  # another version loads meanwhile, allocating as it goes

    def free_while_another_loads() -> None:
        fake.free(8 * MiB)
        fake.allocate(16 * MiB)

    check = ledger.check_unload(("m", "1"), footprint, 8 * MiB, free_while_another_loads)
    assert check is None and ledger.leaks() == [] and footprint.leaked_bytes is None


# -- measured footprint ------------------------------------------------------------------


async def test_warmup_measures_the_peak_at_each_batch_size_apart_from_the_weights(
    start_runtime: StartRuntime, fake_device: fakemem.FakeDeviceMemory
) -> None:
    config = hungry("big", weights_mb=8, per_row_mb=1)
    config["warmup"] = {"batch_sizes": [8, 1, 4, 2]}  # a peak not reset would read 8 for all
    _, runtime = await start_runtime([config])
    version = state(runtime).models[0]
    assert version.weights_mb == 8.0
    assert version.peak_working_mb_by_batch == {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}
    assert version.peak_working_mb == 8.0
    assert sample(runtime, "modelfleet_model_weights_bytes", model="big") == 8 * MiB
    assert sample(runtime, "modelfleet_model_peak_working_bytes", model="big") == 8 * MiB


async def test_each_version_is_measured_on_its_own_beside_the_others(
    start_runtime: StartRuntime, fake_device: fakemem.FakeDeviceMemory
) -> None:
    _, runtime = await start_runtime(
        [hungry("small", weights_mb=2, per_row_mb=0.5), hungry("big", weights_mb=8, per_row_mb=1)]
    )
    by_name = {m.name: m for m in state(runtime).models}
    # loads ran at the same time: weights fall back to the modules' tensors (none here)
    # unless a load ran alone; peaks of passes overlapping a load are not used
    assert set(by_name) == {"small", "big"}
    for name, per_row in (("small", 0.5), ("big", 1.0)):
        measured = by_name[name].peak_working_mb_by_batch or {}
        assert all(peak == rows * per_row for rows, peak in measured.items()), measured
    assert state(runtime).device_allocated_mb == 10.0


async def test_on_the_cpu_the_admin_state_says_memory_is_not_measured(
    start_runtime: StartRuntime,
) -> None:
    _, runtime = await start_runtime([tiny_model("plain", "identity")])
    actual = state(runtime)
    version = actual.models[0]
    assert (version.weights_mb, version.peak_working_mb, version.peak_working_mb_by_batch) == (
        None,
        None,
        None,
    )
    assert (actual.device_allocated_mb, actual.device_reserved_mb) == (None, None)
    assert actual.reserved_after_unload_mb is None and actual.leaked == ()


# -- memory comes back -------------------------------------------------------------------


async def test_unload_gives_the_memory_back_and_reports_what_stays_reserved(
    start_runtime: StartRuntime, fake_device: fakemem.FakeDeviceMemory
) -> None:
    _, runtime = await start_runtime(
        [hungry("keep", weights_mb=2, per_row_mb=0), hungry("gone", weights_mb=8)]
    )
    keep = next(c for c in runtime.repository.desired if c.name == "keep")
    calls = fake_device.empty_cache_calls
    await runtime.repository.apply((keep,), wait=True)
    actual = state(runtime)
    assert fake_device.empty_cache_calls > calls
    assert fake_device.allocated() == 2 * MiB
    assert actual.reserved_after_unload_mb == 2.0  # the cache went back to the driver
    assert actual.leaked == ()
    assert sample(runtime, "modelfleet_unload_leaks_total", model="gone") is None


async def test_a_version_that_keeps_its_memory_after_unload_is_flagged(
    start_runtime: StartRuntime,
    fake_device: fakemem.FakeDeviceMemory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, runtime = await start_runtime([hungry("drip", "leaky", weights_mb=8)])
    with caplog.at_level(logging.WARNING, logger="modelfleet.runtime"):
        await runtime.repository.apply((), wait=True)
    actual = state(runtime)
    assert [(v.name, v.version, v.leaked_mb) for v in actual.leaked] == [("drip", "1", 8.0)]
    assert actual.reserved_after_unload_mb == 8.0
    assert sample(runtime, "modelfleet_unload_leaks_total", model="drip") == 1
    assert sample(runtime, "modelfleet_unload_leaked_bytes_total", model="drip") == 8 * MiB
    assert "model 'drip' version '1' did not give its device memory back" in caplog.text


async def test_a_measured_version_serves_as_before(
    start_runtime: StartRuntime, fake_device: fakemem.FakeDeviceMemory
) -> None:
    client, runtime = await start_runtime([hungry("big", weights_mb=8)])
    resp = await client.post("/v2/models/big/infer", json=infer_body("x", [1, 2, 3, 4], [1, 4]))
    assert resp.status == 200, await resp.text()
    assert isinstance(runtime.worker, DeviceWorker)
    assert fake_device.allocated() == 8 * MiB  # the pass's working memory went back
