"""The loaded models out of the cyclic collector's way (``serving/heap.py``), and the
event loop's lag, which a full collection over them used to stretch to 120-145 ms."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref

import pytest

from modelfleet.serving import heap
from tests.runtime.conftest import StartRuntime, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_settle_freezes_what_exists_and_release_gives_it_back() -> None:
    try:
        heap.settle()
        assert gc.get_freeze_count() > 1000  # at least pytest's and torch's objects
    finally:
        heap.release()
    assert gc.get_freeze_count() == 0


async def test_a_loaded_model_is_frozen_and_an_unloaded_one_is_collected(
    start_runtime: StartRuntime,
) -> None:
    """The module of a loaded version is in the permanent generation; once the version
    is unloaded, a reference cycle in it is freed by the collector (were it still
    frozen, ``gc.collect`` would not find it)."""
    _, runtime = await start_runtime([tiny_model("cyc", "cyclic")])
    module = runtime.repository.models[("cyc", "1")].module
    assert module is not None and gc.is_tracked(module)
    assert gc.get_freeze_count() > 1000
    frozen = weakref.ref(module)
    del module
    gc.collect()
    assert frozen() is not None, "a loaded module was collected"
    await runtime.repository.unload_name("cyc")
    assert gc.get_freeze_count() == 0  # given back to the collector ...
    gc.collect()
    assert frozen() is None, "the unloaded module's reference cycle outlived a collection"
    # ... and frozen again by the runtime's periodic probe once a full collection ran.
    await wait_until("the runtime to freeze again", lambda: gc.get_freeze_count() > 1000, 2.0)


def test_refreeze_waits_for_a_full_collection_after_release() -> None:
    heap.settle()
    heap.release()
    assert gc.get_freeze_count() == 0
    assert not heap.refreeze(), "refrozen before a full collection freed what was dropped"
    gc.collect(1)  # not a full one
    assert not heap.refreeze()
    gc.collect()
    try:
        assert heap.refreeze() and gc.get_freeze_count() > 1000
        assert not heap.refreeze()  # once
    finally:
        heap.release()


async def test_the_event_loop_lag_is_a_metric(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([tiny_model("idle", "identity")])
    await asyncio.sleep(0.15)
    text = await (await client.get("/metrics")).text()
    count = re.search(r"^modelfleet_event_loop_lag_seconds_count (\S+)$", text, re.M)
    assert count is not None and float(count.group(1)) >= 3, text[-2000:]
    # An idle loop runs its timer within a few milliseconds.
    within = re.search(
        r'^modelfleet_event_loop_lag_seconds_bucket\{le="0\.05"\} (\S+)$', text, re.M
    )
    assert within is not None and float(within.group(1)) >= float(count.group(1)) - 1
