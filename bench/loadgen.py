"""A closed-loop HTTP/1.1 load generator: C connections, each sends its next
request as soon as the previous answer arrives.

Written on raw asyncio streams with the request bytes built once, so that the
generator itself costs a few tens of microseconds per request: on a 2-core
machine every microsecond it spends is taken from the server it measures.
Shared by the runtime and gateway benchmarks (and usable against any server).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Point:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.percentile(99)


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    return parts.hostname or "127.0.0.1", parts.port or 80, raw


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bytes]:
    """Sends one request on a kept-alive connection; returns (status, body)."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line[15:])
        elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length) if length else b""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size + 2))


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keeps the generator's own collector from pausing it while it measures: what
    exists before (torch and the modules imported for the raw forward pass, earlier
    runs' leftovers) leaves the cyclic collector's walks until the end. Without it, a
    full collection of the bench process took 92-106 ms in the middle of a window
    (2026-12-03): every request in flight looked that much slower, and the arrivals
    due meanwhile went out at once, a burst that no Poisson client sends."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def closed_loop(
    url: str,
    body: bytes | Sequence[bytes],
    headers: dict[str, str] | Sequence[dict[str, str]],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
    reconnect: bool = False,
) -> Point:
    """Runs ``concurrency`` connections for ``warmup_s + duration_s``; measures the last part.
    With ``reconnect`` each request opens a connection of its own (and closes it), as
    many independent clients would: the server's cost per connection counts too.

    ``body`` may be a list: each request then sends the next one of them in turn
    (across all connections), so that concurrent requests carry different data.
    ``headers`` may then be a list too, one per body (binary tensors of different
    shapes have JSON headers of different lengths).
    """
    bodies = [body] if isinstance(body, bytes) else list(body)
    if not bodies:
        raise ValueError("closed_loop needs at least one request body")
    per_body = [headers] * len(bodies) if isinstance(headers, dict) else list(headers)
    if len(per_body) != len(bodies):
        raise ValueError(f"{len(per_body)} header sets for {len(bodies)} bodies")
    built = [build_request(url, b, h) for b, h in zip(bodies, per_body, strict=True)]
    host, port, _ = built[0]
    raws = itertools.cycle([raw for _, _, raw in built])
    measure_from = stop_at = 0.0  # set once the heap is frozen, below
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    status, _ = await exchange(reader, writer, next(raws))
                except (OSError, asyncio.IncompleteReadError):
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                t1 = time.perf_counter()
                if reconnect:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                if measure_from <= t0 and t1 <= stop_at:
                    if status == 200:
                        latencies.append((t1 - t0) * 1000)
                    else:
                        errors += 1
        finally:
            writer.close()

    with frozen_heap():
        start = time.perf_counter()  # after gc.collect()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Point(concurrency, len(latencies), errors, duration_s, latencies)


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def open_loop(
    url: str,
    classes: dict[str, tuple[bytes, dict[str, str], float]],
    rate: float,
    duration_s: float,
    seed: int = 0,
) -> dict[str, Point]:
    """Poisson arrivals at ``rate`` per second, split between request classes by
    share (class -> (body, headers, share)); answers that are not 200 count as
    shed. Connections are pooled and opened on demand."""
    import random

    rng = random.Random(seed)
    names = list(classes)
    shares = [classes[n][2] for n in names]
    built = {n: build_request(url, classes[n][0], classes[n][1]) for n in names}
    host, port, _ = built[names[0]]
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: dict[str, list[float]] = {n: [] for n in names}
    errors = dict.fromkeys(names, 0)

    async def one(name: str) -> None:
        conn = idle.pop() if idle else await asyncio.open_connection(host, port)
        t0 = time.perf_counter()
        try:
            status, _ = await exchange(conn[0], conn[1], built[name][2])
        except (OSError, asyncio.IncompleteReadError):
            conn[1].close()
            errors[name] += 1
            return
        idle.append(conn)
        if status == 200:
            latencies[name].append((time.perf_counter() - t0) * 1000)
        else:
            errors[name] += 1

    tasks = []
    start = time.perf_counter()
    next_at = start
    while next_at < start + duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(rng.choices(names, shares)[0])))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return {n: Point(0, len(latencies[n]), errors[n], duration_s, latencies[n]) for n in names}
