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


def test_the_gateway_finds_tritons_priority_where_the_runtime_does() -> None:
    """The header first, else the body's ``parameters.priority``: before the tensors or
    after them (tritonclient.http writes them after; behind a JSON tensor's data that
    is well past the first 4 KB), and only in the JSON head of a binary request."""
    import json

    from aiohttp.test_utils import make_mocked_request

    from modelfleet.gateway.proxy import DEFAULT_LEVEL, _level

    def level(body: bytes, headers: dict[str, str] | None = None) -> int:
        return _level(make_mocked_request("POST", "/v2/models/m/infer", headers=headers), body)

    tensor = {"name": "x", "shape": [1, 2000], "datatype": "FP32", "data": [0.25] * 2000}
    after = json.dumps({"inputs": [tensor], "parameters": {"priority": 2}}).encode()
    before = json.dumps({"parameters": {"priority": 3}, "inputs": [tensor]}).encode()
    assert len(after) > 8192
    assert level(after) == 2 and level(before) == 3
    assert level(json.dumps({"inputs": [tensor]}).encode()) == DEFAULT_LEVEL
    assert level(after, {"X-ModelFleet-Priority": "1"}) == 1  # the header wins
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}],
                       "parameters": {"priority": 4}}).encode()  # fmt: skip
    binary = head + b'"priority": 1 '.ljust(16)  # tensor bytes that look like JSON
    assert level(binary, {"Inference-Header-Content-Length": str(len(head))}) == 4
    assert level(binary[: len(head)].replace(b'"priority": 4', b'"other": 4') + binary[len(head) :],
                 {"Inference-Header-Content-Length": str(len(head))}) == DEFAULT_LEVEL  # fmt: skip


async def test_a_request_above_the_default_level_goes_past_the_limit_up_to_twice_it() -> None:
    """``urgent_below=5``: with every slot taken and low requests waiting, priority 1-4
    goes at once (the runtime runs it before what is in flight), up to twice the limit;
    past that it waits as before, ahead of the low waiters. Its slot, given back while
    the gate is over its limit, goes to nobody."""
    gate = Admission("m", limit=2, max_waiting=8, urgent_below=5)
    for _ in range(2):
        await gate.acquire(5, 1)
    low = asyncio.ensure_future(gate.acquire(5, 1))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await asyncio.shield(low)
    await gate.acquire(1, 1)  # at once, though a low request waits
    await gate.acquire(4, 1)
    assert gate.in_flight == 4
    third = asyncio.ensure_future(gate.acquire(2, 1))  # twice the limit: it waits
    await asyncio.sleep(0)
    assert not third.done()
    gate.release()  # over the limit: the slot goes to nobody
    assert gate.in_flight == 3 and not third.done() and not low.done()
    gate.release()
    gate.release()  # back at the limit: the best waiter, the urgent one
    await third
    assert not low.done()
    gate.release()
    await low
    other = Admission("n", limit=1, max_waiting=0, urgent_below=5)
    await other.acquire(5, 1)
    with pytest.raises(Unavailable):  # the default level does not go past the limit
        await other.acquire(5, 1)
