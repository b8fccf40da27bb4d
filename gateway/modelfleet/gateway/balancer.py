"""Endpoint choice: power of two random choices on outstanding requests plus the
queue depth each runtime reports; failing endpoints are ejected for a while."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Endpoint:
    url: str
    outstanding: int = 0
    """Requests this gateway has in flight to it."""
    queue_depth: int = 0
    """The runtime's last reported queue depth (X-ModelFleet-Queue-Depth)."""
    ejected_until: float = 0.0
    failures: int = 0
    expected_wait_s: float = 0.0
    """The runtime's last reported expected queue wait (X-ModelFleet-Expected-Wait-Ms)."""
    reported_at: float = -1e9
    """When it was reported (monotonic seconds)."""

    def wait_at(self, now: float, fresh_s: float) -> float:
        """The reported expected wait while it is fresh, else 0 (unknown: try it)."""
        return self.expected_wait_s if now - self.reported_at <= fresh_s else 0.0

    @property
    def load(self) -> int:
        return self.outstanding + self.queue_depth

    def eject(self, now: float, period_s: float) -> None:
        """Leaves the endpoint out for a period that doubles with each failure in a row."""
        self.failures += 1
        self.ejected_until = now + period_s * min(8, 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0
        self.ejected_until = 0.0


def pick(
    endpoints: Sequence[Endpoint],
    now: float,
    rng: random.Random,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
) -> Endpoint | None:
    """Two random healthy candidates, the less loaded wins. When every endpoint is
    ejected, they are all candidates again (better a try than a certain failure)."""
    fresh = [e for e in endpoints if e.url not in exclude]
    healthy = [e for e in fresh if e.ejected_until <= now] or fresh
    if not healthy:
        return None
    if len(healthy) == 1:
        return healthy[0]
    a, b = rng.sample(healthy, 2)
    return a if a.load <= b.load else b


def least_wait(endpoints: Sequence[Endpoint], now: float, fresh_s: float) -> float:
    """The smallest expected wait among the healthy endpoints (0 when one has no
    fresh report): what the best of them can promise a request now."""
    healthy = [e for e in endpoints if e.ejected_until <= now] or list(endpoints)
    return min((e.wait_at(now, fresh_s) for e in healthy), default=0.0)
