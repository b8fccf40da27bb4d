"""``make bench`` (overload part): what a high-priority client sees while
low-priority load exceeds capacity.

One runtime serves the example fleet: ``mlp`` (priority 100) and ``cnn``
(priority 10), on CPU 0 (the forward process too, with ``executor: process``);
the load generator, and the gateway when one is measured, run on CPU 1. The
generator runs on uvloop: a connection a request costs it about 250 us of CPU there
against about 400 us on asyncio's own loop (1,500 a second against a server that
refuses them all, 2026-12-04), CPU the gateway beside it does not get. The
CNN's capacity is measured first, closed-loop with requests of 8 images
(``--low-rows``). Then
a steady high-priority MLP stream (``--high-rate``, default 50/s) runs alone,
and beside low-priority CNN load at 0.5x, 1x, 2x and 10x of that capacity
(open loop, Poisson arrivals, one connection per request). The high class's
client is a process of its own (``--shared-client``: the load generator's). Per
class: sent, ok, shed (503/429), timeouts, errors, p50/p99 of the answers, p99 of
the refusals, and the low class's goodput as a share of what it achieves alone at
saturation with the same kind of client (closed loop, 16 at once, a connection a
request unless ``--keepalive``; measured for ``--reference-s``, 10 s, before each
set-up's rows, "goodput/sat").

With ``--device-cpu`` (process executor, runtime alone) the forward process gets CPU
1 of its own, the way a GPU is a device of its own, and the serving process shares CPU
0 with the load generator: the CNN's capacity is then the device's, and the goodput
at 2x says whether shedding takes any of it (on one CPU, every refusal's CPU is
taken from the forward pass too). Writes ``overload-device-cpu.json`` / ``.png``.

Each loaded row is checked against the issue's properties, in a ``holds``
column: the high class's p99 within 2x its unloaded p99 plus the service time of
one full CNN batch (the raw forward pass of ``max_batch_size`` rows, measured in
the same run on one thread), and at least 99.9% of it answered; the low class's
refusals in under 50 ms (p99) and its goodput at least 90% of what it asked for,
at most its saturation.

On a host whose speed drifts, a reference taken once before the rows can be
far from the speed at the 2x row. ``--pairs N`` then runs the 2x load N more
times, each window between two references of the same length (the low class
alone at saturation, as above), and judges each window against the mean of the
two beside it: "paired 2x goodput", its median and range (2026-12-04, five
pairs: medians of 88% and 85% for the thread and process executors alone on one
CPU, 98% and 103% through the gateway, where single references had given
59-120% on the same code).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import yaml

from bench.ceiling import paired_ratios
from bench.loadgen import closed_loop, table
from bench.overload import Seen, Traffic, run_classes
from bench.sources import pythonpath
from bench.traffic import encode
from modelfleet.runtime.examples import write_examples

ROOT = Path(__file__).resolve().parents[1]
FACTORS = (0.5, 1.0, 2.0, 10.0)
MODELS = [
    {
        "name": "mlp", "source": "mlp.safetensors", "priority": 100,
        "architecture": "modelfleet.runtime.examples:mlp",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 1},
        "queue": {"max_size": 512, "timeout_ms": 5000},
    },
    {
        "name": "cnn", "source": "cnn.safetensors", "priority": 10,
        "architecture": "modelfleet.runtime.examples:cnn",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 2},
        "queue": {"max_size": 256, "timeout_ms": 10000},
    },
]  # fmt: skip


def body(name: str, rows: int, seed: int) -> bytes:
    return requests(name, rows, "json", count=1, seed=seed)[0][0]


def requests(
    name: str,
    rows: int,
    encoding: str,
    count: int = 16,
    seed: int = 0,
    parameters: dict[str, Any] | None = None,
) -> tuple[list[bytes], dict[str, str]]:
    """``count`` distinct requests of ``rows`` rows for ``name`` (values rounded to 4
    decimals, as a JSON client would print them), and the headers they share:
    ``json`` tensors, or Triton's binary extension (``tritonclient.http``'s default)."""
    spec = next(m for m in MODELS if m["name"] == name)["inputs"][0]
    bodies: list[bytes] = []
    headers: dict[str, str] = {}
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        x = np.round(rng.standard_normal([rows, *spec["shape"][1:]]), 4).astype(np.float32)
        encoded, headers = encode([spec], [x], encoding, parameters)
        bodies.append(encoded)
    return bodies, headers


def on_cpu(cpu: int) -> Any:
    def pin() -> None:
        if (os.cpu_count() or 1) > cpu:
            os.sched_setaffinity(0, {cpu})

    return pin


def pin_descendants(pid: int, cpu: int) -> list[int]:
    """Moves every thread of every process below ``pid`` (children, theirs, ...) to
    ``cpu``; returns the processes moved. ``--device-cpu``: the runtime's forward
    process gets a CPU of its own."""
    moved: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            for child in map(int, children):
                for thread in Path(f"/proc/{child}/task").iterdir():
                    os.sched_setaffinity(int(thread.name), {cpu})
                moved.append(child)
                parents.append(child)
    return moved


def start(command: str, flag: str, document: dict[str, Any], tmp: Path, cpu: int) -> Any:
    path = tmp / f"{command}.yaml"
    path.write_text(yaml.safe_dump(document))
    log = (tmp / f"{command}.log").open("w")
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    proc = subprocess.Popen([sys.executable, "-m", "modelfleet", command, flag, str(path)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=on_cpu(cpu))  # fmt: skip
    url = f"http://127.0.0.1:{document['server']['port']}"
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{command} exited: {(tmp / f'{command}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{command} not ready after 120 s")


GOODPUT_SHARE = 0.9
SHED_WITHIN_MS = 50.0
HIGH_SUCCESS = 0.999


def batch_service_ms(store: Path, model: str = "cnn", repeats: int = 30) -> float:
    """The raw forward pass of one full batch of ``model`` on one thread (median, ms):
    the "service time of one batch of the largest model" in the high class's bound."""
    import torch

    from modelfleet.runtime.config import ModelConfig
    from modelfleet.runtime.loader import load_module

    spec = next(m for m in MODELS if m["name"] == model)
    config = ModelConfig.model_validate(spec)
    torch.set_num_threads(1)
    module = load_module(config, store, torch.device("cpu"))
    rows = spec["batching"]["max_batch_size"]
    x = torch.randn(rows, *spec["inputs"][0]["shape"][1:])
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            module(x)
            times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def verdict(name: str, s: Seen, reference: float | None, bound_ms: float | None) -> str:
    """Which of the issue's properties this row meets ("ok") or misses (named). The low
    class's goodput is held to 90% of ``reference``: what it asked for, at most what it
    achieves alone at saturation with the same kind of client."""
    missed = []
    if reference is None:  # the high class
        if bound_ms is not None and not s.p(99) <= bound_ms:
            missed.append(f"p99>{bound_ms:.1f}")
        if s.sent and s.ok / s.sent < HIGH_SUCCESS:
            missed.append(f"ok {s.ok / s.sent:.1%}")
    else:
        if s.shed and not s.shed_p(99) < SHED_WITHIN_MS:
            missed.append(f"shed p99>{SHED_WITHIN_MS:g}")
        if s.goodput / reference < GOODPUT_SHARE:
            missed.append(f"goodput<{GOODPUT_SHARE:.0%}")
    return ", ".join(missed) or "ok"


def row(
    label: str,
    name: str,
    s: Seen,
    saturation: float | None,
    bound_ms: float | None = None,
    asked: float = float("inf"),
) -> list[Any]:
    """``saturation``: the low class's goodput alone at saturation (None: the high class)."""
    goodput = f"{s.goodput / saturation:.0%}" if saturation else ""
    reference = min(asked, saturation) if saturation else None
    holds = "" if label == "none" else verdict(name, s, reference, bound_ms)
    return [label, name, s.sent, s.ok, s.shed, s.timeouts, s.errors, f"{s.p50:.1f}",
            f"{s.p(99):.1f}", f"{s.shed_p(99):.1f}", goodput, holds]  # fmt: skip


HEADER = ["low load", "class", "sent", "ok", "shed", "timeouts", "errors", "p50 ms", "p99 ms",
          "shed p99 ms", "goodput/sat", "holds"]  # fmt: skip


URGENT = {"priority": 1}
"""``--high cnn``: Triton's request priority, the highest level (the CNN's own requests
go at its default level, 5)."""


def high_traffic(url: str, args: argparse.Namespace) -> Traffic:
    """The steady high class: one-row MLP requests (``--high mlp``), or one-image
    requests of the CNN itself carrying Triton's ``priority: 1`` (``--high cnn``: two
    request priorities of one model)."""
    parameters = URGENT if args.high == "cnn" else None
    bodies, headers = requests(args.high, 1, args.encoding, parameters=parameters)
    return Traffic("high", args.high_rate, bodies, headers, f"{url}/v2/models/{args.high}/infer")


def _high_class(url: str, args: argparse.Namespace) -> Seen:
    """The high-priority client, in a process of its own (``scenario``)."""
    traffic = high_traffic(url, args)
    return uvloop.run(run_classes([traffic], args.duration, keepalive=args.keepalive))["high"]


async def both_classes(
    url: str,
    args: argparse.Namespace,
    low_rate: float,
    low: tuple[list[bytes], dict[str, str]],
) -> dict[str, Seen]:
    """The two classes at once. The high class runs in a client process of its own
    (unless ``--shared-client``): its latency is then what a separate client sees, not
    the lag of the load generator's event loop, busy with the low class's hundreds of
    connections a second (both processes share CPU 1)."""
    low_traffic = Traffic("low", low_rate, *low, f"{url}/v2/models/cnn/infer")
    if args.shared_client:
        return await run_classes([high_traffic(url, args), low_traffic], args.duration,
                                 keepalive=args.keepalive)  # fmt: skip
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        job = pool.submit(_high_class, url, args)
        seen = await run_classes([low_traffic], args.duration, keepalive=args.keepalive)
        seen["high"] = await asyncio.wrap_future(job)
    return seen


async def scenario(
    url: str, capacity: float, args: argparse.Namespace, label: str
) -> tuple[list[list[Any]], dict[str, Any]]:
    low = requests("cnn", args.low_rows, args.encoding)
    high_name = f"high ({args.high}{', priority 1' if args.high == 'cnn' else ''})"
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {}
    # What the low class achieves alone at saturation with the load's own kind of client
    # (a connection a request unless --keepalive): its goodput is judged against that.
    point = await closed_loop(f"{url}/v2/models/cnn/infer", *low, 16, args.reference_s,
                              reconnect=not args.keepalive)  # fmt: skip
    saturation = point.throughput
    raw["saturation"] = saturation
    print(f"  [{label}] cnn alone at saturation, closed loop c=16, {args.reference_s:g} s, "
          f"{'kept-alive connections' if args.keepalive else 'a connection a request'}: "
          f"{saturation:.0f} requests/s", flush=True)  # fmt: skip
    alone = await run_classes([high_traffic(url, args)], args.duration, keepalive=args.keepalive)
    rows.append(row("none", high_name, alone["high"], None))
    raw["none"] = {"high": vars_of(alone["high"])}
    bound = 2 * alone["high"].p(99) + args.batch_ms
    raw["bound_ms"] = bound
    for factor in args.factors:
        seen = await both_classes(url, args, factor * capacity, low)
        rows.append(row(f"{factor:g}x", high_name, seen["high"], None, bound))
        rows.append(row(f"{factor:g}x", "low (cnn)", seen["low"], saturation, None,
                        factor * capacity))  # fmt: skip
        raw[f"{factor:g}x"] = {k: vars_of(v) for k, v in seen.items()}
        print(f"  [{label}] {factor:g}x done", flush=True)
    if args.pairs:
        raw["pairs"] = await paired_goodput(url, capacity, args, low, label)
    return rows, raw


async def paired_goodput(
    url: str,
    capacity: float,
    args: argparse.Namespace,
    low: tuple[list[bytes], dict[str, str]],
    label: str,
) -> dict[str, Any]:
    """``--pairs``: the low class's goodput at 2x in ``args.pairs`` windows, each
    between two windows of it alone at saturation, each over the mean of those two."""
    infer = f"{url}/v2/models/cnn/infer"

    async def reference() -> float:
        point = await closed_loop(infer, *low, 16, args.duration, reconnect=not args.keepalive)
        return float(point.throughput)

    references = [await reference()]
    served: list[float] = []
    high_p99: list[float] = []
    for i in range(args.pairs):
        seen = await both_classes(url, args, 2 * capacity, low)
        served.append(seen["low"].goodput)
        high_p99.append(seen["high"].p(99))
        references.append(await reference())
        ratio = paired_ratios(served[-1:], references[-2:])[0]
        print(f"  [{label}] pair {i + 1}/{args.pairs}: 2x goodput {served[-1]:.0f}/s, "
              f"alone {references[-2]:.0f} and {references[-1]:.0f}/s: {ratio:.0%}; "
              f"high p99 {high_p99[-1]:.1f} ms", flush=True)  # fmt: skip
    return paired_summary(served, references, high_p99)


def paired_summary(
    served: list[float], references: list[float], high_p99: list[float]
) -> dict[str, Any]:
    """What ``--pairs`` measured: each 2x window's goodput over the mean of the
    references beside it, and their median and range."""
    ratios = paired_ratios(served, references)
    return {"goodput_per_s": served, "references_per_s": references, "ratios": ratios,
            "median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios),
            "high_p99_ms": high_p99}  # fmt: skip


def paired_line(pairs: dict[str, Any]) -> str:
    return (f"paired 2x goodput ({len(pairs['ratios'])} windows, each against the low class "
            f"alone just before and after it): median {pairs['median']:.0%}, "
            f"{pairs['min']:.0%}-{pairs['max']:.0%}")  # fmt: skip


def vars_of(s: Seen) -> dict[str, Any]:
    return {"sent": s.sent, "ok": s.ok, "shed": s.shed, "timeouts": s.timeouts,
            "errors": s.errors, "p50_ms": s.p50, "p99_ms": s.p(99),
            "shed_p99_ms": s.shed_p(99), "goodput_per_s": s.goodput}  # fmt: skip


def server_settings(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


async def measure(args: argparse.Namespace, tmp: Path, executor: str) -> dict[str, Any]:
    from tests.support.servers import free_port

    port = free_port()
    document = {
        "server": {"port": port, "admin_port": free_port(), "model_store": str(tmp),
                   "torch_threads": 1, "executor": executor, "forward_nice": 10,
                   **server_settings(args.server)},
        "models": MODELS,
    }  # fmt: skip
    proc, url = start("serve", "--config", document, tmp, 0)
    try:
        if args.device_cpu:
            moved = pin_descendants(proc.pid, 1)
            if not moved:
                raise SystemExit("--device-cpu: the runtime started no forward process")
            print(f"  [{executor}] forward process {moved} on CPU 1 of its own; the serving "
                  "process and the load generator on CPU 0", flush=True)  # fmt: skip
        low = requests("cnn", args.low_rows, args.encoding)
        point = await closed_loop(f"{url}/v2/models/cnn/infer", *low, 16, 3.0)
        capacity = point.throughput
        print(f"  [{executor}] cnn capacity ({args.low_rows} images a request, closed loop c=16): "
              f"{capacity:.0f} requests/s", flush=True)  # fmt: skip
        rows, raw = await scenario(url, capacity, args, executor)
        result: dict[str, Any] = {"capacity": capacity, "runtime": raw, "rows": rows}
        if args.gateway:
            gw_doc = {"server": {"port": free_port(), **server_settings(args.gateway_setting)},
                      "models": {m["name"]: {"priority": m["priority"], "versions": [
                          {"version": "1", "weight": 100, "endpoints": [url]}]}
                          for m in MODELS}}  # fmt: skip
            gw, gw_url = start("gateway", "--routes", gw_doc, tmp, 1)
            try:
                grows, graw = await scenario(gw_url, capacity, args, f"{executor} via gateway")
            finally:
                gw.terminate()
                gw.wait(10)
            result["gateway"], result["gateway_rows"] = graw, grows
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def plot(results: dict[str, Any], path: Path) -> None:
    """High-priority p99 and low-priority goodput against the low load, per set-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for executor, result in results.items():
        for where, key in (("alone", "runtime"), ("via gateway", "gateway")):
            raw = result.get(key)
            if not raw:
                continue
            levels = [k for k in raw if k.endswith("x")]
            xs = [float(k.rstrip("x")) for k in levels]
            label = f"{executor}, {where}"
            line = ax1.plot(xs, [raw[k]["high"]["p99_ms"] for k in levels], marker="o", label=label)
            ax2.plot(xs, [raw[k]["low"]["goodput_per_s"] / raw["saturation"] for k in levels],
                     marker="o", color=line[0].get_color(), label=label)  # fmt: skip
            ax1.axhline(raw["none"]["high"]["p99_ms"], color=line[0].get_color(), ls=":", lw=1)
    ax1.set(xscale="log", yscale="log", xlabel="low-priority load / capacity",
            ylabel="high-priority p99 (ms)", title="High priority under low-priority load "
            "(dotted: unloaded)")  # fmt: skip
    ax2.axhline(0.9, color="red", ls=":", lw=1, label="90%")
    ax2.set(xscale="log", xlabel="low-priority load / capacity",
            ylabel="low-priority goodput / alone at saturation", title="Low-priority goodput")  # fmt: skip
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load level")
    parser.add_argument("--reference-s", type=float, default=10.0,
                        help="seconds the low class runs alone at saturation for its goodput's "
                             "reference (3 s windows moved by up to 25%% from one to the next "
                             "on one runtime; 10 s ones by 2%%)")  # fmt: skip
    parser.add_argument("--high-rate", type=float, default=50.0)
    parser.add_argument("--high", choices=["mlp", "cnn"], default="mlp",
                        help="the high class: the MLP (priority 100; default), or the CNN's "
                             "own requests with Triton's priority 1 (two request priorities "
                             "of one model)")  # fmt: skip
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS))
    parser.add_argument("--executors", nargs="+", default=["thread", "process"])
    parser.add_argument("--no-gateway", dest="gateway", action="store_false")
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="clients reuse connections, as tritonclient's pool does (default: one "
        "connection a request); writes overload-keepalive.json / .png",
    )
    parser.add_argument("--encoding", choices=["json", "binary"], default="json",
                        help="how both classes send their tensors: JSON (default) or "
                             "Triton's binary extension, tritonclient.http's default")  # fmt: skip
    parser.add_argument("--low-rows", type=int, default=8,
                        help="images a CNN request (at most its max_batch_size, "
                             f"{MODELS[1]['batching']['max_batch_size']})")  # fmt: skip
    parser.add_argument("--shared-client", action="store_true",
                        help="the high class shares the load generator's event loop "
                             "(before 2026-12-03: its latency then includes that loop's lag)")  # fmt: skip
    parser.add_argument("--server", action="append", default=[], help="KEY=VALUE server setting")
    parser.add_argument("--gateway-setting", action="append", default=[],
                        help="KEY=VALUE gateway server setting (e.g. holdback_wait_ms=null)")  # fmt: skip
    parser.add_argument("--pairs", type=int, default=0,
                        help="after the rows, N more windows of 2x load, each judged "
                             "against the low class alone just before and after it "
                             "(a host's drift out of the goodput; default 0: none)")  # fmt: skip
    parser.add_argument("--device-cpu", action="store_true",
                        help="the forward process on CPU 1 of its own, as a GPU is a device "
                             "of its own; the serving process and the load generator on "
                             "CPU 0 (needs --executors process --no-gateway)")  # fmt: skip
    args = parser.parse_args()
    if args.device_cpu and (args.executors != ["process"] or args.gateway):
        parser.error("--device-cpu needs --executors process --no-gateway (a thread "
                     "executor's forward pass is a thread of the serving process; the "
                     "gateway would share the device's CPU)")  # fmt: skip
    if args.pairs < 0:
        parser.error(f"--pairs {args.pairs}: a number of windows, 0 or more")
    if not args.reference_s > 0:
        parser.error(f"--reference-s {args.reference_s:g}: a number of seconds above 0")
    if args.device_cpu and (os.cpu_count() or 1) < 2:
        parser.error("--device-cpu needs two CPUs")
    if not 1 <= args.low_rows <= MODELS[1]["batching"]["max_batch_size"]:
        parser.error(f"--low-rows {args.low_rows}: from 1 to the CNN's max_batch_size, "
                     f"{MODELS[1]['batching']['max_batch_size']}")  # fmt: skip
    on_cpu(0 if args.device_cpu else 1)()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_examples(tmp)
        args.batch_ms = batch_service_ms(Path(tmp))
        print(f"one full cnn batch ({MODELS[1]['batching']['max_batch_size']} rows), raw "
              f"forward on one thread: {args.batch_ms:.1f} ms", flush=True)  # fmt: skip
        for executor in args.executors:
            results[executor] = uvloop.run(measure(args, Path(tmp), executor))
    for executor, result in results.items():
        where = ", forward process on CPU 1" if args.device_cpu else ""
        print(f"\n== overload, runtime alone, executor: {executor}{where} "
              f"(cnn capacity {result['capacity']:.0f} requests/s)")  # fmt: skip
        print(f"high-class bound: 2 x unloaded p99 + {args.batch_ms:.1f} ms = "
              f"{result['runtime']['bound_ms']:.1f} ms")  # fmt: skip
        print(table(result["rows"], HEADER))
        if "pairs" in result["runtime"]:
            print(paired_line(result["runtime"]["pairs"]))
        if "gateway_rows" in result:
            print(f"\n== overload through the gateway, executor: {executor} (high-class "
                  f"bound {result['gateway']['bound_ms']:.1f} ms)")  # fmt: skip
            print(table(result["gateway_rows"], HEADER))
            if "pairs" in result["gateway"]:
                print(paired_line(result["gateway"]["pairs"]))
    document = {"batch_service_ms": args.batch_ms, "device_cpu": args.device_cpu,
                "setups": results}  # fmt: skip
    stem = "overload-keepalive" if args.keepalive else "overload"
    stem += "-device-cpu" if args.device_cpu else ""
    (out / f"{stem}.json").write_text(json.dumps(document, indent=1, default=str))
    plot(results, out / f"{stem}.png")
    print(f"\nwrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
