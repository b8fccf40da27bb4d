"""Recent latencies: the p99 of the last window only (fake time)."""

from __future__ import annotations

import pytest

from modelfleet.runtime.recent import RecentLatencies


def test_recent_latencies_give_the_p99_of_the_last_window_only() -> None:
    recent = RecentLatencies(size=1000, window_s=60)
    assert recent.quantile_ms(0.99, now=0.0) is None
    for i in range(100):
        recent.record(float(i), 0.001 * (i + 1))  # 1 ms .. 100 ms
    assert recent.quantile_ms(0.99, now=100.0) == pytest.approx(99.4, abs=0.2)
    # Only the samples recorded at t >= 100 - 60 count: 41..100 ms.
    assert recent.quantile_ms(0.0, now=100.0) == pytest.approx(41.0)
    assert recent.quantile_ms(0.99, now=1000.0) is None
