"""Version choice: by weight, sticky by session key through consistent hashing.

A key hashes to a point in [0, 1); versions own consecutive slices of that
interval in document order, sized by weight. Changing one weight moves only the
keys in the slices that shrink or grow: 10 -> 20 moves about 10% of the keys.

A request without a key takes the next point of its model's ``Spread``, a
low-discrepancy sequence rather than a random draw: after any N requests each
version's count is within a few requests of its share (random draws stray by
~sqrt(N) requests: by more than 2 points over 2,000 requests at 25% about 4% of
the time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from modelfleet.gateway.routes import VersionRoute


def key_point(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Spread:
    """Points in [0, 1) for requests without a session key: the additive recurrence
    by the golden ratio, x(n+1) = frac(x(n) + 0.618...), whose first N points cover
    every interval [a, b) about (b - a) * N times, give or take a few."""

    STEP = (5**0.5 - 1) / 2

    def __init__(self, start: float = 0.0) -> None:
        self._x = start % 1.0

    def __call__(self) -> float:
        self._x = (self._x + self.STEP) % 1.0
        return self._x


def choose_version(
    versions: Sequence[VersionRoute], key: str | None, draw: Callable[[], float]
) -> VersionRoute | None:
    """The version for this request, or None when no version has weight. A keyed
    request hashes to its point; an unkeyed one takes ``draw()`` (a ``Spread``)."""
    total = sum(v.weight for v in versions)
    if total <= 0:
        return None
    point = key_point(key) if key is not None else draw()
    edge = 0.0
    for version in versions:
        edge += version.weight / total
        if point < edge and version.weight > 0:
            return version
    return next(v for v in reversed(versions) if v.weight > 0)
