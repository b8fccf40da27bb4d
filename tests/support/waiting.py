"""Waiting on facts instead of sleeping: poll a check until it holds.

* :func:`wait_for` -- blocking, for tests that drive processes and ``kubectl``;
* :func:`wait_until` -- the same on the event loop, for in-process tests.

Both return the check's first true result, and fail naming what they waited for
and the last result (or the exception the check raised), so a timeout says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

EXPECTED = (AssertionError, KeyError, IndexError, ValueError, OSError, StopIteration)
"""What a check may raise while the fact is not there yet (it is retried)."""


def _attempt(check: Callable[[], Any]) -> tuple[Any, Any]:
    try:
        value = check()
    except EXPECTED as exc:
        return None, exc
    return value, value


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 90, interval: float = 0.5
) -> Any:
    """Polls ``check`` every ``interval`` seconds until it returns something true."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        value, last = _attempt(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(interval)


async def wait_until(
    what: str, check: Callable[[], Any], within_s: float = 10.0, interval: float = 0.02
) -> Any:
    """``wait_for`` on the running event loop (the check must not block)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    last: Any = None
    while True:
        value, last = _attempt(check)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
