"""Measured service times and arrival rates: admission's inputs (pure, fake time)."""

from __future__ import annotations

import math

import pytest

from modelfleet.runtime.service import Arrivals, ServiceTime


def test_arrivals_decay_and_count_only_the_levels_that_go_first() -> None:
    a = Arrivals(tau_s=1.0)
    for i in range(100):  # 20 rows/s at level 1 and 50/s at level 5 for 5 s
        a.add(1, 1, i * 0.05)
        a.add(5, 1, i * 0.05)
        a.add(5, 1, i * 0.05 + 0.025)
        if i % 2:
            a.add(5, 1, i * 0.05 + 0.04)
    now = 99 * 0.05 + 0.04
    assert a.rate_ahead(5, now, inclusive=False) == pytest.approx(20, rel=0.1)
    assert a.rate_ahead(5, now, inclusive=True) == pytest.approx(70, rel=0.1)
    assert a.rate_ahead(1, now, inclusive=False) == 0.0
    later = a.rate_ahead(5, now + 2.0, inclusive=True)  # nothing arrived for 2 s
    assert later == pytest.approx(a.rate_ahead(5, now, inclusive=True) * math.exp(-2), rel=1e-6)


def test_service_time_follows_the_batches_and_ignores_empty_ones() -> None:
    s = ServiceTime(alpha=0.5)
    s.record(0, 1.0)
    assert s.seconds_per_row == 0.0
    s.record(10, 0.1)
    assert s.seconds_per_row == pytest.approx(0.01)
    s.record(10, 0.3)
    assert s.seconds_per_row == pytest.approx(0.02)
