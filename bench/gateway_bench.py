"""``make bench`` (gateway part): the latency the gateway adds at concurrency 1 and
its throughput on one core, in front of a trivially fast upstream.

The gateway runs pinned to CPU 0; the upstream and the load generator share CPU 1.
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
from pathlib import Path

import yaml

from bench.loadgen import closed_loop, table
from tests.support.servers import ENV, free_port

BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'
HEADERS = {"Content-Type": "application/json"}


def wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "bench.echo_server",
                                 str(up_port)], env=ENV)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        routes = Path(tmp) / "routes.yaml"
        routes.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": gw_port},
            "models": {"echo": {"max_concurrency": 1024, "versions": [
                {"version": "1", "weight": 100, "endpoints": [f"http://127.0.0.1:{up_port}"]}]}},
        }))  # fmt: skip
        gateway = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "modelfleet", "--log-level",
                                    "WARNING", "gateway", "--routes", str(routes)], env=ENV)  # fmt: skip
        try:
            direct, via = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
            wait(direct, upstream)
            wait(via, gateway)
            os.sched_setaffinity(0, {1})
            path = "/v2/models/echo/infer"
            d1 = asyncio.run(closed_loop(direct + path, BODY, HEADERS, 1, args.duration))
            g1 = asyncio.run(closed_loop(via + path, BODY, HEADERS, 1, args.duration))
            best = None
            for c in (16, 64):
                point = asyncio.run(closed_loop(via + path, BODY, HEADERS, c, args.duration))
                if best is None or point.throughput > best.throughput:
                    best = point
            assert best is not None
        finally:
            gateway.terminate()
            upstream.terminate()
            gateway.wait(10)
            upstream.wait(10)
    added = g1.p50 - d1.p50
    rows = [
        ["direct, c=1", f"{d1.throughput:,.0f}", f"{d1.p50:.3f}", f"{d1.p99:.3f}", ""],
        ["via gateway, c=1", f"{g1.throughput:,.0f}", f"{g1.p50:.3f}", f"{g1.p99:.3f}", f"{added:+.3f}"],
        [f"via gateway, c={best.concurrency}", f"{best.throughput:,.0f}", f"{best.p50:.3f}",
         f"{best.p99:.3f}", ""],
    ]  # fmt: skip
    print(table(rows, ["case", "req/s", "p50 ms", "p99 ms", "added p50 ms"]))
    print(f"gateway added latency at c=1 (p50): {added:.3f} ms (target <= 1 ms); "
          f"throughput with the gateway on one core: {best.throughput:,.0f} req/s (target >= 3,000)")  # fmt: skip
    result = {"added_p50_ms": added, "direct_p50_ms": d1.p50, "gateway_p50_ms": g1.p50,
              "max_throughput": best.throughput, "at_concurrency": best.concurrency,
              "errors": best.errors + g1.errors}  # fmt: skip
    (out / "gateway.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
