"""Latencies of the most recent requests of one model version, for a p99 the
operator can put in the model's status (Prometheus histograms need a scraper
and a query; this answers "how slow is this version right now" by itself)."""

from __future__ import annotations

from collections import deque

import numpy as np


class RecentLatencies:
    """At most ``size`` latencies, each with the time it was recorded."""

    def __init__(self, size: int = 2048, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)

    def record(self, now: float, seconds: float) -> None:
        self._samples.append((now, seconds))

    def quantile_ms(self, q: float, now: float) -> float | None:
        """The ``q`` quantile (0..1) of the latencies of the last ``window_s``
        seconds, in milliseconds; None when there were none."""
        since = now - self.window_s
        values = [s for t, s in self._samples if t >= since]
        if not values:
            return None
        return round(float(np.quantile(values, q)) * 1000, 3)
