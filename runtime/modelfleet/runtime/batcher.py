"""One model version's bounded request queue and its dynamic-batching rule.

Pure logic on an injected clock: no event loop, no torch. The device worker
asks ``ready_at`` when the next batch may go and ``take_batch`` for it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from modelfleet.runtime.config import Batching
from modelfleet.serving.errors import Unavailable

QUEUED, RUNNING, DONE, EXPIRED, SHED = "queued", "running", "done", "expired", "shed"


@dataclass(eq=False, slots=True)
class Pending:
    """A request waiting in a model's queue."""

    payload: Any
    """The request's input arrays (opaque here)."""
    rows: int
    """Its share of the batch dimension."""
    level: int
    """Request priority level: 1 is the highest."""
    enqueued_at: float
    deadline: float
    future: Any = None
    """Where the worker puts the result (an asyncio future in production)."""
    group: Hashable = None
    """Requests share a batch only within a group: the shapes of their inputs
    past the batch dimension (with padding: the bucket)."""
    length: int = 0
    """With padding: the request's own length along the padded dimension."""
    due: float = 0.0
    """When its answer is due: the model's latency objective after arrival when it
    has one, else its deadline (earliest first among queues of one priority class)."""
    state: str = QUEUED
    seq: int = 0


@dataclass(slots=True)
class ModelQueue:
    """A bounded priority queue (level, then arrival) of one model version."""

    name: str
    version: str
    priority: int
    batching: Batching
    max_size: int
    _heap: list[tuple[int, int, Pending]] = field(default_factory=list)
    _groups: dict[Hashable, list[tuple[int, int, Pending]]] = field(default_factory=dict)
    """The same order as ``_heap`` per group (a batch is taken from one)."""
    _group_rows: dict[Hashable, int] = field(default_factory=dict)
    """Rows queued per group; a group leaves both dicts when it has none left."""
    _level_rows: dict[int, int] = field(default_factory=dict)
    """Rows queued per priority level (what admission counts as work ahead)."""
    _fifo: deque[Pending] = field(default_factory=deque)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _live: int = 0
    _rows: int = 0
    arriving: int = 0
    """Requests for this model being received and decoded right now (set by the server)."""

    def __len__(self) -> int:
        return self._live

    def full_error(self) -> Unavailable:
        return Unavailable(
            f"queue of model '{self.name}' version '{self.version}' is full "
            f"({self.max_size} requests waiting)",
            retry_after_s=1,
        )

    def _lowest(self) -> Pending | None:
        """The queued request that goes last: lowest level, newest arrival."""
        live = [p for _, _, p in self._heap if p.state == QUEUED]
        return max(live, key=lambda p: (p.level, p.seq)) if live else None

    def would_refuse(self, level: int, inbound: int = 0) -> bool:
        """Whether a request of ``level`` would be refused now (checked before its
        body is even read, so that shedding costs little); ``inbound``: requests
        already let in that are not queued yet (their places are taken)."""
        if self._live + inbound < self.max_size:
            return False
        # The lowest level queued, from the rows kept per level: no scan of the queue,
        # which is full (and long) exactly when this is asked most often.
        return not self._level_rows or max(self._level_rows) <= level

    def push(self, item: Pending) -> Pending | None:
        """Enqueues. When full, a request of a higher priority level displaces the
        lowest queued one, which is returned (its owner answers it 503); otherwise
        503 at once, and the requests already queued are unaffected."""
        displaced = None
        if self._live >= self.max_size:
            lowest = self._lowest()
            if lowest is None or lowest.level <= item.level:
                raise self.full_error()
            self._leave(lowest, SHED)
            displaced = lowest
        item.seq = next(self._counter)
        entry = (item.level, item.seq, item)
        heapq.heappush(self._heap, entry)
        heapq.heappush(self._groups.setdefault(item.group, []), entry)
        self._group_rows[item.group] = self._group_rows.get(item.group, 0) + item.rows
        self._level_rows[item.level] = self._level_rows.get(item.level, 0) + item.rows
        self._fifo.append(item)
        self._live += 1
        self._rows += item.rows
        return displaced

    def _leave(self, item: Pending, state: str) -> None:
        item.state = state
        self._live -= 1
        self._rows -= item.rows
        self._level_rows[item.level] -= item.rows
        if not self._level_rows[item.level]:
            del self._level_rows[item.level]
        left = self._group_rows[item.group] - item.rows
        if left > 0:
            self._group_rows[item.group] = left
        else:  # its last request: forget the group (and its stale entries)
            del self._group_rows[item.group]
            del self._groups[item.group]
        if self._live == 0:  # empty: drop what only lazy deletion still holds
            self._heap.clear()
            self._fifo.clear()

    def rows_ahead(self, level: int, *, inclusive: bool) -> int:
        """Rows queued at a higher priority level than ``level`` (and at ``level``
        itself when ``inclusive``): the work that goes before a request of it."""
        return sum(
            rows
            for lv, rows in self._level_rows.items()
            if lv < level or (inclusive and lv == level)
        )

    def expire(self, item: Pending) -> bool:
        """Marks a queued request expired (its deadline passed); False if already taken."""
        if item.state != QUEUED:
            return False
        self._leave(item, EXPIRED)
        return True

    def head(self) -> Pending | None:
        """The request that goes first (highest level, then oldest)."""
        while self._heap and self._heap[0][2].state != QUEUED:
            heapq.heappop(self._heap)
        return self._heap[0][2] if self._heap else None

    def oldest(self) -> Pending | None:
        """The request that has waited longest, whatever its level."""
        while self._fifo and self._fifo[0].state != QUEUED:
            self._fifo.popleft()
        return self._fifo[0] if self._fifo else None

    def ready_at(self, now: float) -> float | None:
        """When a batch may be dispatched; ``None`` when empty.

        At once when the batch is full (the rows of the first request's group,
        or all the rows queued: then one batch cannot take them all anyway), or
        (eager batching) when no further request for this model is being
        received; otherwise when the oldest request has waited ``max_queue_delay_ms``.
        """
        oldest = self.oldest()
        if oldest is None:
            return None
        limit = self.batching.max_batch_size
        if self._rows >= limit:
            return now
        head = self.head()
        if head is not None and self._group_rows[head.group] >= limit:
            return now
        if self.batching.eager and self.arriving == 0:
            return now  # nothing more is on its way: waiting would only add latency
        return oldest.enqueued_at + self.batching.max_queue_delay_ms / 1000.0

    def take_batch(
        self, now: float, max_rows: int | None = None, max_level: int | None = None
    ) -> tuple[list[Pending], list[Pending]]:
        """Pops requests in order (level, then arrival) until the batch is full
        (``max_batch_size`` rows, or ``max_rows`` when smaller; the first request is
        taken whatever its rows), from the group of the request that goes first:
        requests of other shapes keep their places and lead later batches. With
        ``max_level``, no request of a lower level (a larger number) than that joins
        the first one: an express batch carries only the class it runs for.

        Returns the batch and the requests found past their deadline: those are
        marked expired and never executed.
        """
        batch: list[Pending] = []
        expired: list[Pending] = []
        rows = 0
        limit = self.batching.max_batch_size
        if max_rows is not None:
            limit = min(limit, max_rows)
        while True:
            head = self.head()
            if head is not None and head.deadline <= now:
                self._leave(head, EXPIRED)
                expired.append(head)
                continue
            break
        if head is None:
            return batch, expired
        group = head.group
        heap = self._groups[group]
        while heap:
            item = heap[0][2]
            if item.state != QUEUED:
                heapq.heappop(heap)
                continue
            if item.deadline <= now:
                heapq.heappop(heap)
                self._leave(item, EXPIRED)
                expired.append(item)
                if group not in self._groups:
                    break
                continue
            if batch and rows + item.rows > limit:
                break  # does not fit: it leads the next batch
            if batch and max_level is not None and item.level > max_level:
                break  # a lower class: it waits for a batch of its own
            heapq.heappop(heap)
            self._leave(item, RUNNING)
            batch.append(item)
            rows += item.rows
            if rows >= limit or group not in self._groups:
                break
        return batch, expired
