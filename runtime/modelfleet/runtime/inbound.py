"""Requests let in by the front door whose handler has not started yet."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

EXPIRY_S = 0.5
"""A handler starts a few loop iterations after the door lets its request in; one
that never starts (its client left) stops counting after this long."""


class Inbound:
    """The front door decides a connection's request, then aiohttp's handler takes it
    a few event-loop iterations later: without a count of those in between, the door
    lets in several requests for the last free place of a queue, and the handlers of
    all but one refuse them, at the full cost of a request through aiohttp. The door
    adds one here when it lets a request in and counts them against the queue's free
    places; the REST handler claims one when it starts."""

    __slots__ = ("_clock", "_since")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: deque[float] = deque()

    def add(self) -> None:
        self._since.append(self._clock())

    def claim(self) -> None:
        if self._since:
            self._since.popleft()

    def count(self) -> int:
        since = self._since
        if since:
            stale = self._clock() - EXPIRY_S
            while since and since[0] < stale:
                since.popleft()
        return len(since)
