"""Endpoint choice and ejection (pure, fake time)."""

from __future__ import annotations

import random

from modelfleet.gateway.balancer import Endpoint, pick


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
