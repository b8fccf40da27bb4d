"""Measured service times: what admission expects the queued work to take."""

from __future__ import annotations

from dataclasses import dataclass


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
