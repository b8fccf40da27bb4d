"""The device scheduler's choice: which model's batch runs next.

Order: request priority level (1 is highest); then model priority (higher
first); then the earliest due answer (latency objective, else deadline); then
the oldest request. Strict between priority classes: under sustained overload
the lower class waits (and is refused at admission or expires at its deadline)
instead of delaying the higher one. With ``aging_ms`` (opt-in), every that much
the model's oldest request has waited raises its rank by one level, so that a
lower class cannot starve, at the price of the higher class's latency under
overload. Pure: the device worker supplies the clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelfleet.runtime.batcher import ModelQueue


def rank(queue: ModelQueue, now: float, aging_s: float) -> tuple[float, int, float, float]:
    head = queue.head()
    oldest = queue.oldest()
    assert head is not None and oldest is not None
    boost = int(max(0.0, now - oldest.enqueued_at) / aging_s) if aging_s > 0 else 0
    return (head.level - boost, -queue.priority, head.due, oldest.enqueued_at)


def pick(
    queues: Iterable[ModelQueue], now: float, aging_s: float
) -> tuple[ModelQueue | None, float | None]:
    """Returns the queue whose batch should run now, or the time to look again."""
    best: ModelQueue | None = None
    best_rank: tuple[float, int, float, float] | None = None
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


def express_level(queue: ModelQueue, running: tuple[float, int]) -> int:
    """The lowest request level (the largest number) that a batch of ``queue`` may carry
    on the express lane beside a batch of class ``running`` (``rank(...)[:2]``): only
    rows of a strictly higher class. Lower rows would run beside the batch they belong
    behind, and make the higher ones wait for their forward pass (at 2x, one urgent
    image of the CNN went with 8 of its default level)."""
    level, neg_priority = int(running[0]), running[1]
    return level if -queue.priority < neg_priority else level - 1
