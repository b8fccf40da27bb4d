"""The gateway's pure parts: split, endpoint choice, ejection, admission (fake time)."""

from __future__ import annotations

import asyncio
import random

import pytest

from modelfleet.gateway.admission import Admission
from modelfleet.gateway.balancer import Endpoint, pick
from modelfleet.gateway.routes import RoutesError, VersionRoute, parse_routes
from modelfleet.gateway.split import Spread, choose_version
from modelfleet.serving.errors import Unavailable


def versions(*weights: float) -> list[VersionRoute]:
    return [VersionRoute(version=str(i + 1), weight=w) for i, w in enumerate(weights)]


def test_requests_without_a_key_follow_the_weights_closely_at_every_count() -> None:
    for weights, start in (((75, 25), 0.0), ((90, 10), 0.37), ((50, 30, 20), 0.9)):
        spread = Spread(start)
        counts = [0] * len(weights)
        for n in range(1, 5001):
            chosen = choose_version(versions(*weights), None, spread)
            assert chosen is not None
            counts[int(chosen.version) - 1] += 1
            # within 4 requests of the exact share after any number of requests
            for count, w in zip(counts, weights, strict=True):
                assert abs(count - n * w / sum(weights)) <= 4, (weights, n, counts)


def test_a_random_draw_would_miss_the_2_point_bound_that_the_spread_keeps() -> None:
    # Why not rng.random(): over 2,000 requests at 25%, random draws land outside
    # 23-27% in about 4% of trials; the spread never does.
    rng = random.Random(7)
    misses = 0
    for _ in range(300):
        share = sum(rng.random() >= 0.75 for _ in range(2000)) / 2000
        misses += abs(share - 0.25) > 0.02
    assert misses > 0
    for start in (i / 300 for i in range(300)):
        spread = Spread(start)
        share = sum(choose_version(versions(75, 25), None, spread).version == "2"  # type: ignore[union-attr]
                    for _ in range(2000)) / 2000  # fmt: skip
        assert abs(share - 0.25) <= 0.002


def test_a_session_key_always_gets_the_same_version() -> None:
    rng = random.Random(2)
    for i in range(500):
        first = choose_version(versions(50, 50), f"user-{i}", rng.random)
        assert all(
            choose_version(versions(50, 50), f"user-{i}", rng.random) == first for _ in range(3)
        )


def test_weight_change_from_10_to_20_moves_about_10_percent_of_keys() -> None:
    rng = random.Random(3)
    keys = [f"session-{i}" for i in range(10_000)]
    before = {k: choose_version(versions(90, 10), k, rng.random).version for k in keys}  # type: ignore[union-attr]
    after = {k: choose_version(versions(80, 20), k, rng.random).version for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.08 < len(moved) / len(keys) < 0.12
    assert all(after[k] == "2" for k in moved)


def test_zero_weight_versions_get_no_traffic_and_all_zero_means_none() -> None:
    rng = random.Random(4)
    assert all(choose_version(versions(0, 5), None, rng.random).version == "2" for _ in range(200))  # type: ignore[union-attr]
    assert choose_version(versions(0, 0), "k", rng.random) is None


def test_power_of_two_choices_prefers_the_less_loaded_endpoint() -> None:
    busy, idle = Endpoint("http://a", outstanding=5), Endpoint("http://b", queue_depth=0)
    rng = random.Random(5)
    assert all(pick([busy, idle], 0.0, rng) is idle for _ in range(50))
    busy.outstanding, idle.queue_depth = 0, 9  # reported queue depth counts too
    assert all(pick([busy, idle], 0.0, rng) is busy for _ in range(50))


def test_failed_endpoint_is_ejected_with_growing_backoff_then_returns() -> None:
    a, b = Endpoint("http://a"), Endpoint("http://b")
    rng = random.Random(6)
    a.eject(now=100.0, period_s=5)
    assert all(pick([a, b], 101.0, rng) is b for _ in range(20))
    assert a.ejected_until == 105.0
    a.eject(now=106.0, period_s=5)
    assert a.ejected_until == 116.0  # doubled
    assert any(pick([a, b], 117.0, rng) is a for _ in range(50))
    a.succeeded()
    assert a.failures == 0
    b.eject(now=0, period_s=5)
    a.eject(now=0, period_s=5)
    assert pick([a, b], 1.0, rng) is not None  # all ejected: still try one
    assert pick([a], 1.0, rng, exclude={"http://a"}) is None


def test_routes_are_validated_with_the_field_named() -> None:
    with pytest.raises(RoutesError, match=r"models\.m\.versions\.0\.endpoints"):
        parse_routes(
            {"models": {"m": {"versions": [{"version": "1", "endpoints": ["10.0.0.1:80"]}]}}}
        )
    with pytest.raises(RoutesError, match=r"models\.m\.max_concurrency"):
        parse_routes({"models": {"m": {"max_concurrency": 0, "versions": [{"version": "1"}]}}})


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
