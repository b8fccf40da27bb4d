"""``make bench`` (gateway part): the latency the gateway adds at concurrency 1 and
its throughput on one core, in front of a trivially fast upstream.

``python -m bench.gateway_bench --out DIR`` prints a table and writes
``DIR/gateway.json``. The gateway runs pinned to CPU 0 (``taskset -c 0``); the
upstream and the load generator share CPU 1. The upstream is a few lines on a raw
asyncio protocol that answers every request with a fixed OIP response, so that
CPU 1 can drive more requests than one gateway core passes: the throughput
measured is the gateway's, not its neighbours'. Added latency is the p50 via the
gateway minus the p50 straight to the same upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bench.loadgen import closed_loop, table
from tests.support.servers import ENV, free_port

BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'
T = TypeVar("T")
HEADERS = {"Content-Type": "application/json"}
PATH = "/v2/models/echo/infer"
ANSWER = (
    b'{"model_name":"echo","model_version":"1",'
    b'"outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[1.0]}]}'
)


# -- the upstream: python -m bench.gateway_bench --upstream PORT -------------------------


class _Echo(asyncio.Protocol):
    """Answers each HTTP/1.1 request (GET or POST with Content-Length) with ANSWER."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-ModelFleet-Queue-Depth: 0\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
    ) + ANSWER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.RESPONSE)


async def _serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port)
    await server.serve_forever()


# -- the measurement -------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # a cheaper load generator leaves more of CPU 1 to the upstream


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready after 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # the upstream's port
    args = parser.parse_args()
    if args.upstream:
        _run(_serve_upstream(args.upstream))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    up_port, gw_port = free_port(), free_port()
    python = [sys.executable, "-m"]
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", *python, "bench.gateway_bench", "--upstream", str(up_port)], env=ENV
    )
    with tempfile.TemporaryDirectory() as tmp:
        routes = Path(tmp) / "routes.yaml"
        routes.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": gw_port},
            "models": {"echo": {"max_concurrency": 1024, "versions": [
                {"version": "1", "weight": 100, "endpoints": [f"http://127.0.0.1:{up_port}"]}]}},
        }))  # fmt: skip
        gateway = subprocess.Popen(
            ["taskset", "-c", "0", *python, "modelfleet", "--log-level", "WARNING",
             "gateway", "--routes", str(routes)], env=ENV,
        )  # fmt: skip
        try:
            direct, via = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            _wait(direct, upstream)
            _wait(via, gateway)
            os.sched_setaffinity(0, {1})
            d1 = _run(closed_loop(direct + PATH, BODY, HEADERS, 1, args.duration))
            g1 = _run(closed_loop(via + PATH, BODY, HEADERS, 1, args.duration))
            points = [_run(closed_loop(via + PATH, BODY, HEADERS, c, args.duration))
                      for c in (8, 32)]  # fmt: skip
            best = max(points, key=lambda p: p.throughput)
        finally:
            gateway.terminate()
            upstream.terminate()
            gateway.wait(10)
            upstream.wait(10)
    added = g1.p50 - d1.p50
    rows = [
        ["direct, c=1", f"{d1.throughput:,.0f}", f"{d1.p50:.3f}", f"{d1.p99:.3f}", ""],
        ["via gateway, c=1", f"{g1.throughput:,.0f}", f"{g1.p50:.3f}", f"{g1.p99:.3f}",
         f"{added:+.3f}"],
    ] + [
        [f"via gateway, c={p.concurrency}", f"{p.throughput:,.0f}", f"{p.p50:.3f}",
         f"{p.p99:.3f}", ""] for p in points
    ]  # fmt: skip
    print(table(rows, ["case", "req/s", "p50 ms", "p99 ms", "added p50 ms"]))
    print(f"gateway added latency at c=1 (p50): {added:.3f} ms (target <= 1 ms); "
          f"throughput with the gateway on one core: {best.throughput:,.0f} req/s "
          f"(target >= 3,000)")  # fmt: skip
    result = {
        "added_p50_ms": added, "direct_p50_ms": d1.p50, "gateway_p50_ms": g1.p50,
        "gateway_p99_ms": g1.p99, "max_throughput": best.throughput,
        "at_concurrency": best.concurrency, "errors": sum(p.errors for p in [g1, *points]),
        "targets": {"added_p50_ms": 1.0, "max_throughput": 3000},
    }  # fmt: skip
    (out / "gateway.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
