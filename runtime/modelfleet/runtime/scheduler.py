"""The device scheduler's choice: which model's batch runs next.

Order: request priority level (1 is highest), raised by one level for every
``aging_ms`` the model's oldest request has waited so that nothing starves;
then model priority (higher first); then the oldest request. Pure: the
device worker supplies the clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelfleet.runtime.batcher import ModelQueue


def rank(queue: ModelQueue, now: float, aging_s: float) -> tuple[float, int, float]:
    head = queue.head()
    oldest = queue.oldest()
    assert head is not None and oldest is not None
    waited = max(0.0, now - oldest.enqueued_at)
    return (head.level - int(waited / aging_s), -queue.priority, oldest.enqueued_at)


def pick(
    queues: Iterable[ModelQueue], now: float, aging_s: float
) -> tuple[ModelQueue | None, float | None]:
    """Returns the queue whose batch should run now, or the time to look again."""
    best: ModelQueue | None = None
    best_rank: tuple[float, int, float] | None = None
    wake: float | None = None
    for queue in queues:
        at = queue.ready_at(now)
        if at is None:
            continue
        if at > now:
            wake = at if wake is None else min(wake, at)
            continue
        r = rank(queue, now, aging_s)
        if best_rank is None or r < best_rank:
            best, best_rank = queue, r
    return best, (None if best is not None else wake)
