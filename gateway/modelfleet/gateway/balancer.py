"""Endpoint choice: power of two random choices on outstanding requests plus the
queue depth each runtime reports; failing endpoints are ejected for a while. And
what each runtime last reported of the queue wait, per model: the hold-back's input."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Endpoint:
    url: str
    outstanding: int = 0
    """Requests this gateway has in flight to it."""
    queue_depth: int = 0
    """The runtime's last reported queue depth (X-ModelFleet-Queue-Depth)."""
    ejected_until: float = 0.0
    failures: int = 0
    waits: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per model: the runtime's last reported expected queue wait of a request for it
    (X-ModelFleet-Expected-Wait-Ms on the model's answers), and when it came
    (monotonic seconds). Per model, because one runtime's models wait differently: a
    high-priority model's requests go before a low-priority backlog."""

    def report(self, model: str, wait_s: float, now: float) -> None:
        self.waits[model] = (wait_s, now)

    def wait_at(self, model: str, now: float, fresh_s: float) -> float:
        """The model's reported expected wait while it is fresh, else 0 (unknown: try it)."""
        wait, at = self.waits.get(model, (0.0, -1e9))
        return wait if now - at <= fresh_s else 0.0

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


def least_wait(endpoints: Sequence[Endpoint], model: str, now: float, fresh_s: float) -> float:
    """The smallest expected wait for ``model`` among the healthy endpoints (0 when
    one has no fresh report): what the best of them can promise a request now."""
    healthy = [e for e in endpoints if e.ejected_until <= now] or list(endpoints)
    return min((e.wait_at(model, now, fresh_s) for e in healthy), default=0.0)


def open_to(
    endpoints: Sequence[Endpoint],
    model: str,
    now: float,
    fresh_s: float,
    left_s: float,
    headroom_s: Mapping[str, float],
) -> list[Endpoint]:
    """The healthy endpoints (all, when every one is ejected) that may take a request
    for ``model`` with ``left_s`` to its deadline: those that expect to start it
    within that time and, where ``headroom_s`` names the endpoint (it serves a model
    of higher priority), within that headroom."""
    healthy = [e for e in endpoints if e.ejected_until <= now] or list(endpoints)
    return [
        e
        for e in healthy
        if e.wait_at(model, now, fresh_s) <= min(left_s, headroom_s.get(e.url, left_s))
    ]
