"""Per-model concurrency limit at the gateway, with priority shedding.

Up to ``limit`` requests are in flight; the next ones wait in a bounded queue
ordered by priority level (Triton's meaning: 1 is highest), oldest first within a
level. When that queue is full, a newcomer of a higher level displaces the lowest
waiter, which is shed with 503; a newcomer that is not higher is shed itself. A
waiter that waits too long is answered 503 too. High-priority traffic keeps passing.

With ``urgent_below`` (the gateway passes the default level, 5), a request of a
higher level than that (Triton's ``priority`` 1 to 4) may go past the limit, up to
twice it: the requests in flight are mostly waiting in the runtime's queue, which it
goes before there, so it need not wait for one of them to end (at 2x CNN overload an
urgent CNN request waited about 5 ms at the median for a slot).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from modelfleet.serving.errors import Unavailable

_Waiter = tuple[int, int, "asyncio.Future[None]"]


class Admission:
    def __init__(
        self, model: str, limit: int, max_waiting: int, urgent_below: int | None = None
    ) -> None:
        self.model = model
        self.limit = limit
        self.max_waiting = max_waiting
        self.urgent_below = urgent_below
        self.in_flight = 0
        self.waiting = 0
        """Waiters not yet granted, shed, timed out or gone."""
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    def _shed_error(self) -> Unavailable:
        error = Unavailable(
            f"model '{self.model}' is overloaded at the gateway ({self.limit} in flight, "
            f"{self.max_waiting} waiting); lower-priority requests are shed first",
            retry_after_s=1,
            reason="queue_full",
        )
        return error

    def _passes(self, level: int) -> bool:
        """Whether a request of ``level`` takes a slot at once."""
        if self.in_flight < self.limit and not self.waiting:
            return True
        urgent = self.urgent_below is not None and level < self.urgent_below
        return urgent and self.in_flight < 2 * self.limit  # past the limit: no waiter gets it

    def refusal(self, level: int) -> Unavailable | None:
        """The 503 that :meth:`acquire` would raise at once for a request of ``level``
        (every place taken, none by a lower level), or None: it would pass, wait or
        displace a waiter. Changes nothing (the gateway's front door asks)."""
        if self._passes(level) or self.waiting < self.max_waiting:
            return None
        worst = self._worst()
        return self._shed_error() if worst is None or worst[0] <= level else None

    async def acquire(self, level: int, timeout_s: float) -> None:
        """Returns once the request holds a slot (then call :meth:`release` exactly once);
        raises :class:`Unavailable` (503) when it is shed or waited ``timeout_s``."""
        if self._passes(level):
            self.in_flight += 1
            return
        if self.waiting >= self.max_waiting:
            worst = self._worst()
            if worst is None or worst[0] <= level:
                raise self._shed_error()  # nobody of a lower priority to displace
            worst[2].set_exception(self._shed_error())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting += 1
        future.add_done_callback(self._left)
        heapq.heappush(self._heap, (level, next(self._seq), future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()  # granted at the last moment but leaving: hand the slot on
            else:
                future.cancel()
            if isinstance(exc, TimeoutError):
                error = Unavailable(
                    f"model '{self.model}': waited {timeout_s * 1000:.0f} ms for a slot "
                    "at the gateway",
                    retry_after_s=1,
                    reason="timeout",
                )
                raise error from None
            raise

    def release(self) -> None:
        """Hands the slot to the best waiter, or frees it."""
        if self.in_flight > self.limit or not self._grant_next():
            self.in_flight -= 1

    def resize(self, limit: int, max_waiting: int) -> None:
        """New limits from new routes: waiters are let in at once if there is room now."""
        self.limit, self.max_waiting = limit, max_waiting
        while self.in_flight < self.limit and self._grant_next():
            self.in_flight += 1

    def _grant_next(self) -> bool:
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)
                return True
        return False

    def _left(self, _: asyncio.Future[None]) -> None:
        self.waiting -= 1
        if len(self._heap) > 2 * self.waiting + 64:  # drop entries of waiters gone
            self._heap = [entry for entry in self._heap if not entry[2].done()]
            heapq.heapify(self._heap)

    def _worst(self) -> _Waiter | None:
        """The waiter that goes last: lowest priority level, newest arrival."""
        live = [entry for entry in self._heap if not entry[2].done()]
        return max(live, key=lambda e: (e[0], e[1])) if live else None
