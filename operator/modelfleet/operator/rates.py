"""Request and error rates per model version, from the counters the runtimes
report at each pass (the operator keeps a minute of samples in memory)."""

from __future__ import annotations

from collections import deque

WINDOW_S = 60.0
MIN_SPAN_S = 5.0
"""Rates need samples at least this far apart; before that none are given."""


class RateWindow:
    """Samples of (time, answered, failed, shed) for one version; counters only grow,
    so a drop (a pod restarted, a copy reloaded) starts the window afresh."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int, int]] = deque()

    def add(
        self, now: float, answered: int, failed: int, shed: int = 0
    ) -> tuple[float, float, float] | None:
        """Records a sample; returns (requests per second, error fraction, shed
        fraction) over the window, or None while it is shorter than ``MIN_SPAN_S``.
        Shed requests are failed ones too (refused or dropped by admission)."""
        last = self._samples[-1] if self._samples else None
        if last and (answered < last[1] or failed < last[2] or shed < last[3]):
            self._samples.clear()
        self._samples.append((now, answered, failed, shed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()
        first_t, first_ok, first_failed, first_shed = self._samples[0]
        span = now - first_t
        if span < MIN_SPAN_S:
            return None
        done, failed_n, shed_n = answered - first_ok, failed - first_failed, shed - first_shed
        total = done + failed_n
        if not total:
            return round(total / span, 3), 0.0, 0.0
        return round(total / span, 3), round(failed_n / total, 4), round(shed_n / total, 4)


def attainment(window: RateWindow, now: float, met: int, missed: int) -> float | None:
    """Records the counts of answers within and past a latency objective; returns
    the share within (0 to 1) over the window, or None before the window spans
    ``MIN_SPAN_S`` or while it holds no answers (an idle model attains nothing)."""
    # Met counts as "answered" and missed as "failed": the failed fraction is the share missed.
    measured = window.add(now, met, missed)
    if measured is None or measured[0] == 0:
        return None
    return round(1.0 - measured[1], 4)
