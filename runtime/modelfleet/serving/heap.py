"""Long-lived objects out of the cyclic garbage collector's way.

A full (oldest-generation) collection walks every container object the process
holds. In a runtime with torch and its models loaded that is hundreds of
thousands of objects: under load it stopped the event loop, with the GIL held,
for 120-145 ms every few seconds (measured with ``gc.callbacks`` at 2x CNN
overload, docs/benchmarks.md), which every request of every priority then
waited out. ``settle`` moves what exists now (the imported libraries, the
loaded models) to the collector's permanent generation, which collections skip;
objects made afterwards (requests, answers) are collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call when the process's long-lived state is built (servers started, a model
    loaded): collections from now on skip it. No collection first: that would be the
    very stop this avoids (the little cyclic garbage frozen with it is found again
    after the next ``release``)."""
    gc.freeze()


def release() -> None:
    """Call before dropping long-lived state that may hold reference cycles (a model
    being unloaded): the collector may then find it again (``settle`` re-freezes)."""
    gc.unfreeze()
