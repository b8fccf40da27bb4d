"""Measured service times: what admission expects the queued work to take."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class ServiceTime:
    """An exponentially weighted mean of one model's forward time per row, from
    the batches it ran (under load: the large batches it runs then)."""

    alpha: float = 0.2
    """Weight of the newest batch."""
    seconds_per_row: float = 0.0
    """0 until the first batch (warm-up included) has run."""
    batch_seconds: float = 0.0
    """The same mean over whole batches."""

    def record(self, rows: int, seconds: float) -> None:
        if rows <= 0 or seconds <= 0:
            return
        per_row = seconds / rows
        if self.seconds_per_row == 0.0:
            self.seconds_per_row, self.batch_seconds = per_row, seconds
            return
        self.seconds_per_row += self.alpha * (per_row - self.seconds_per_row)
        self.batch_seconds += self.alpha * (seconds - self.batch_seconds)


@dataclass(slots=True)
class Arrivals:
    """The rows one model admits per second, per priority level: an exponentially
    decaying rate (time constant ``tau_s``). Admission uses it to stretch a request's
    expected wait by the work of higher classes that will arrive, and go first,
    while it waits: with a share ``rho`` of the device taken by them, the work queued
    ahead of it takes ``1 / (1 - rho)`` times as long (a preemptive-priority queue)."""

    tau_s: float = 1.0
    _rates: dict[int, tuple[float, float]] = field(default_factory=dict)
    """level -> (rows per second, when last updated)."""

    def add(self, level: int, rows: int, now: float) -> None:
        rate, at = self._rates.get(level, (0.0, now))
        self._rates[level] = (rate * math.exp(-(now - at) / self.tau_s) + rows / self.tau_s, now)

    def rate_ahead(self, level: int, now: float, *, inclusive: bool) -> float:
        """Rows per second admitted at a higher level than ``level`` (and at it when
        ``inclusive``)."""
        return sum(
            rate * math.exp(-(now - at) / self.tau_s)
            for lv, (rate, at) in self._rates.items()
            if lv < level or (inclusive and lv == level)
        )
