"""The per-model concurrency limit with priority shedding (fake time)."""

from __future__ import annotations

import asyncio

import pytest

from modelfleet.gateway.admission import Admission
from modelfleet.serving.errors import Unavailable


async def test_admission_sheds_the_lowest_priority_waiter_first() -> None:
    gate = Admission("m", limit=1, max_waiting=2)
    await gate.acquire(5, 1)  # takes the only slot
    low_a = asyncio.ensure_future(gate.acquire(5, 1))
    low_b = asyncio.ensure_future(gate.acquire(5, 1))
    await asyncio.sleep(0)
    high = asyncio.ensure_future(gate.acquire(1, 1))  # full: displaces the newest low one
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="overloaded"):
        await low_b
    with pytest.raises(Unavailable):
        await gate.acquire(5, 1)  # nobody lower to displace
    gate.release()
    await high  # the best waiter gets the slot first
    assert not low_a.done()
    gate.release()
    await low_a
    gate.release()
    assert gate.in_flight == 0


async def test_admission_wait_times_out_with_503() -> None:
    gate = Admission("m", limit=1, max_waiting=4)
    await gate.acquire(5, 1)
    with pytest.raises(Unavailable, match="waited 50 ms"):
        await gate.acquire(5, 0.05)
    gate.release()
    assert gate.in_flight == 0


async def test_a_waiter_that_goes_away_does_not_keep_a_slot() -> None:
    gate = Admission("m", limit=1, max_waiting=4)
    await gate.acquire(5, 1)
    gone = asyncio.ensure_future(gate.acquire(5, 1))
    await asyncio.sleep(0)
    gone.cancel()  # the client hung up while waiting
    await asyncio.sleep(0)
    gate.release()
    assert gate.in_flight == 0
    await gate.acquire(5, 1)  # the slot is free for the next one
    assert gate.in_flight == 1


async def test_a_larger_limit_from_new_routes_lets_waiters_in_at_once() -> None:
    gate = Admission("m", limit=1, max_waiting=4)
    await gate.acquire(5, 1)
    waiters = [asyncio.ensure_future(gate.acquire(5, 1)) for _ in range(2)]
    await asyncio.sleep(0)
    gate.resize(limit=3, max_waiting=4)
    await asyncio.gather(*waiters)
    assert gate.in_flight == 3
    gate.resize(limit=1, max_waiting=4)  # smaller: the extra slots are not handed on
    later = asyncio.ensure_future(gate.acquire(5, 1))
    await asyncio.sleep(0)
    gate.release()
    gate.release()
    await asyncio.sleep(0)
    assert not later.done() and gate.in_flight == 1
    gate.release()
    await later
    assert gate.in_flight == 1
