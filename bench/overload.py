"""Open-loop load of several request classes at once, for the overload scenario.

Each class has its own Poisson arrival rate, body and headers. By default every
request opens its own connection (as many independent clients would), so a
server that is behind cannot hide it by reading one kept-alive connection at a
time; with ``keepalive`` a class reuses idle connections (opened on demand, as a
client pool or the gateway does).
Per class it records what a client sees: answers (200), refusals (503 / 429)
with how fast they came, other errors and timeouts.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.loadgen import build_request, exchange, frozen_heap


@dataclass
class Traffic:
    """One request class: ``rate`` requests per second of ``body``."""

    name: str
    rate: float
    bodies: Sequence[bytes]
    headers: dict[str, str]
    url: str


@dataclass
class Seen:
    """What the clients of one class saw."""

    sent: int = 0
    ok_ms: list[float] = field(default_factory=list)
    shed_ms: list[float] = field(default_factory=list)
    """Latency of the 503 / 429 answers (a refusal should come fast)."""
    errors: int = 0
    timeouts: int = 0
    done_at: list[float] = field(default_factory=list)
    """When each answer (200) arrived, to count the goodput inside the window: the
    answers to requests sent during the warm-up too (those to requests of the window
    that arrive after it are outside it), so that a class whose answers take a large
    part of the window is not undercounted."""
    window: tuple[float, float] = (0.0, 1.0)
    """The measurement window (perf_counter seconds)."""

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def ok(self) -> int:
        return len(self.ok_ms)

    @property
    def shed(self) -> int:
        return len(self.shed_ms)

    def p(self, q: float) -> float:
        return self._pct(self.ok_ms, q)

    def shed_p(self, q: float) -> float:
        return self._pct(self.shed_ms, q)

    @property
    def goodput(self) -> float:
        """Answers (200) per second that arrived inside the measurement window."""
        start, stop = self.window
        return sum(start <= t < stop for t in self.done_at) / (stop - start)

    @property
    def p50(self) -> float:
        return statistics.median(self.ok_ms) if self.ok_ms else float("nan")


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _one(
    raw: bytes, host: str, port: int, seen: Seen, timeout_s: float, record: bool,
    idle: list[Conn] | None,
) -> None:  # fmt: skip
    t0 = time.perf_counter()
    conn: Conn | None = None
    keep = False
    try:
        async with asyncio.timeout(timeout_s):
            conn = idle.pop() if idle else await asyncio.open_connection(host, port)
            status, _ = await exchange(conn[0], conn[1], raw)
            keep = idle is not None
    except TimeoutError:
        if record:
            seen.timeouts += 1
        return
    except (OSError, asyncio.IncompleteReadError):
        if record:
            seen.errors += 1
        return
    finally:
        if conn is not None:
            if keep and idle is not None:
                idle.append(conn)
            else:
                conn[1].close()
    if status == 200:  # goodput counts every answer inside the window, whenever sent
        seen.done_at.append(time.perf_counter())
    if not record:
        return
    ms = (time.perf_counter() - t0) * 1000
    if status == 200:
        seen.ok_ms.append(ms)
    elif status in (429, 503):
        seen.shed_ms.append(ms)
    else:
        seen.errors += 1


async def run_classes(
    classes: Sequence[Traffic],
    duration_s: float,
    *,
    warmup_s: float = 1.0,
    timeout_s: float = 10.0,
    seed: int = 0,
    keepalive: bool = False,
) -> dict[str, Seen]:
    """Sends every class at its rate for ``warmup_s + duration_s``; records the
    requests sent after the warm-up. Waits for the last answers (or timeouts)."""
    with frozen_heap():  # before the clock starts: gc.collect() takes a while
        rng = random.Random(seed)
        seen = {c.name: Seen() for c in classes}
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

        async def arrivals(c: Traffic) -> None:
            built = [build_request(c.url, b, c.headers) for b in c.bodies]
            host, port = built[0][0], built[0][1]
            idle: list[Conn] | None = [] if keepalive else None
            at, i = time.perf_counter(), 0
            while at < stop_at:
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                record = at >= measure_from
                if record:
                    seen[c.name].sent += 1
                raw = built[i % len(built)][2]
                tasks.append(
                    asyncio.create_task(
                        _one(raw, host, port, seen[c.name], timeout_s, record, idle)
                    )
                )
                i += 1
                at += rng.expovariate(c.rate)

        await asyncio.gather(*(arrivals(c) for c in classes if c.rate > 0))
        await asyncio.gather(*tasks)
    for s in seen.values():
        s.window = (measure_from, stop_at)
    return seen
