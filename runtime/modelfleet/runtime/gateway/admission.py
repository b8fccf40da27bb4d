"""Per-model concurrency limit at the gateway, with priority shedding.

Up to ``limit`` requests are in flight; the next ones wait in a bounded queue
ordered by priority level (1 is highest). When that queue is full, a newcomer of
a higher level displaces the lowest waiter, which is shed with 503; a newcomer
that is not higher is shed itself. High-priority traffic keeps passing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from modelfleet.runtime.errors import Unavailable


class Admission:
    def __init__(self, model: str, limit: int, max_waiting: int) -> None:
        self.model = model
        self.limit = limit
        self.max_waiting = max_waiting
        self.in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def _shed_error(self) -> Unavailable:
        return Unavailable(
            f"model '{self.model}' is overloaded at the gateway ({self.limit} in flight, "
            f"{self.max_waiting} waiting); lower-priority requests are shed first",
            retry_after_s=1,
        )

    async def acquire(self, level: int, timeout_s: float) -> None:
        if self.in_flight < self.limit and not self._live_waiters():
            self.in_flight += 1
            return
        if self._live_waiters() >= self.max_waiting:
            worst = self._worst()
            if worst is None or worst[0] <= level:
                raise self._shed_error()  # nobody of a lower priority to displace
            worst[2].set_exception(self._shed_error())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (level, next(self._seq), future)
        heapq.heappush(self._waiters, entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()  # granted at the last moment: hand the slot on
            else:
                future.cancel()
            raise Unavailable(
                f"model '{self.model}': waited {timeout_s * 1000:.0f} ms for a slot at the gateway",
                retry_after_s=1,
            ) from None

    def release(self) -> None:
        """Hands the slot to the best waiter, or frees it."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self.in_flight -= 1

    def _live_waiters(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def _worst(self) -> tuple[int, int, asyncio.Future[None]] | None:
        """The waiter that goes last: lowest priority level, newest arrival."""
        live = [entry for entry in self._waiters if not entry[2].done()]
        return max(live, key=lambda e: (e[0], e[1])) if live else None
