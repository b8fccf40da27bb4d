"""Long-lived objects out of the cyclic garbage collector's way.

A full (oldest-generation) collection walks every container object the process
holds. In a runtime with torch and its models loaded that is hundreds of
thousands of objects: under load it stopped the event loop, with the GIL held,
for 120-145 ms every few seconds (measured with ``gc.callbacks`` at 2x CNN
overload, docs/benchmarks.md), which every request of every priority then
waited out. ``settle`` moves what exists now (the imported libraries, the
loaded models) to the collector's permanent generation, which collections skip;
objects made afterwards (requests, answers) are collected as before.

A model being dropped may hold reference cycles that only the collector frees,
and it cannot free them while they are frozen: ``release`` gives everything back
to it, and ``refreeze`` (called periodically) freezes again once a full
collection has run since, the one that freed them.
"""

from __future__ import annotations

import gc

_released_at: int | None = None
"""Full collections counted when ``release`` ran (None: frozen, or never released)."""


def _full_collections() -> int:
    return int(gc.get_stats()[-1]["collections"])


def settle() -> None:
    """Call when the process's long-lived state is built (servers started, a model
    loaded): collections from now on skip it. No collection first: that would be the
    very stop this avoids (the little cyclic garbage frozen with it is found again
    after the next ``release``)."""
    global _released_at
    gc.freeze()
    _released_at = None


def release() -> None:
    """Call once long-lived state that may hold reference cycles has been dropped (a
    model unloaded): the collector may find it again, until ``refreeze``."""
    global _released_at
    gc.unfreeze()
    _released_at = _full_collections()


def refreeze() -> bool:
    """Freezes again once a full collection has run since ``release`` (True then);
    cheap, for a periodic timer."""
    if _released_at is None or _full_collections() <= _released_at:
        return False
    settle()
    return True
