"""Endpoint choice and ejection (pure, fake time)."""

from __future__ import annotations

import random

from modelfleet.gateway.balancer import Endpoint, least_wait, open_to, pick


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


def test_waits_are_kept_per_model_and_count_only_while_fresh() -> None:
    """A runtime's report for one model says nothing of another's wait: a high-priority
    model's short wait must not open the runtime to a low-priority backlog, nor the
    other way round."""
    e = Endpoint("http://a")
    e.report("cnn", 2.0, now=10.0)
    e.report("mlp", 0.01, now=10.5)
    assert e.wait_at("cnn", 11.0, fresh_s=1.0) == 2.0
    assert e.wait_at("mlp", 11.0, fresh_s=1.0) == 0.01
    assert e.wait_at("cnn", 11.5, fresh_s=1.0) == 0.0  # stale: unknown, ask again
    assert least_wait([e], "cnn", 11.0, 1.0) == 2.0


def test_open_to_keeps_the_headroom_only_where_a_higher_priority_model_is_served() -> None:
    shared, alone = Endpoint("http://shared"), Endpoint("http://alone")
    for e in (shared, alone):
        e.report("cnn", 0.3, now=0.0)
    headroom = {"http://shared": 0.2}  # only the shared runtime serves a higher priority
    assert open_to([shared, alone], "cnn", 0.1, 1.0, 10.0, headroom) == [alone]
    assert open_to([shared], "cnn", 0.1, 1.0, 10.0, headroom) == []
    assert open_to([shared], "cnn", 0.1, 1.0, 10.0, {}) == [shared]  # no headroom to keep
    assert open_to([shared], "cnn", 0.1, 1.0, 0.25, {}) == []  # the deadline is nearer
    shared.eject(0.0, 5.0)
    assert open_to([shared, alone], "cnn", 0.1, 1.0, 10.0, {}) == [alone]
