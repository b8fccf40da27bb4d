"""Request and error rates per model version, from the counters the runtimes
report at each pass (the operator keeps a minute of samples in memory)."""

from __future__ import annotations

from collections import deque

WINDOW_S = 60.0
MIN_SPAN_S = 5.0
"""Rates need samples at least this far apart; before that none are given."""


class RateWindow:
    """Samples of (time, answered, failed) for one version; counters only grow,
    so a drop (a pod restarted, a copy reloaded) starts the window afresh."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, answered: int, failed: int) -> tuple[float, float] | None:
        """Records a sample; returns (requests per second, error fraction) over the
        window, or None while the window is shorter than ``MIN_SPAN_S``."""
        if self._samples and (answered < self._samples[-1][1] or failed < self._samples[-1][2]):
            self._samples.clear()
        self._samples.append((now, answered, failed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()
        first_t, first_ok, first_failed = self._samples[0]
        span = now - first_t
        if span < MIN_SPAN_S:
            return None
        done, failed_n = answered - first_ok, failed - first_failed
        total = done + failed_n
        return round(total / span, 3), round(failed_n / total, 4) if total else 0.0
