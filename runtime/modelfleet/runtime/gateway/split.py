"""Version choice: by weight, sticky by session key through consistent hashing.

A key hashes to a point in [0, 1); versions own consecutive slices of that
interval in document order, sized by weight. Changing one weight moves only the
keys in the slices that shrink or grow: 10 -> 20 moves about 10% of the keys.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from modelfleet.runtime.gateway.routes import VersionRoute


def key_point(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_version(
    versions: Sequence[VersionRoute], key: str | None, rng: random.Random
) -> VersionRoute | None:
    """The version for this request, or None when no version has weight."""
    total = sum(v.weight for v in versions)
    if total <= 0:
        return None
    point = key_point(key) if key is not None else rng.random()
    edge = 0.0
    for version in versions:
        edge += version.weight / total
        if point < edge and version.weight > 0:
            return version
    return next(v for v in reversed(versions) if v.weight > 0)
