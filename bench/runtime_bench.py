"""``make bench`` (runtime part): served throughput and latency against the raw forward pass.

The raw forward pass is measured first, in this process, with one torch
thread: that is the physical limit (the "ceiling") the served numbers are
divided by, measured in the same run. The runtime then serves the same model
files with one torch thread, and a closed-loop load generator sweeps the
concurrency. By default the runtime's event loop and the load generator share
the machine's CPUs with the forward thread, as HTTP handling shares a GPU
host's CPUs; ``--pin`` confines the runtime to CPU 0 and the load to CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.loadgen import Point, closed_loop, table
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.examples import write_examples
from modelfleet.runtime.loader import load_module

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {
        "architecture": "modelfleet.runtime.examples:mlp",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 0.5},
    },
    "cnn": {
        "architecture": "modelfleet.runtime.examples:cnn",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1},
        "optimize": "trace",
    },
}


def model_config(name: str) -> dict[str, Any]:
    spec = MODELS[name]
    return {
        "name": name, "version": "1", "source": f"{name}.safetensors",
        "queue": {"max_size": 1024, "timeout_ms": 30000}, **spec,
    }  # fmt: skip


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


def raw_forward(
    store: Path, name: str, seconds: float = 0.25, rounds: int = 5, max_batch: int = 32
) -> dict[int, float]:
    """Rows per second of the bare forward pass, per batch size (1 thread, CPU 0).

    Both the module as served and the plain eager module are measured, at every
    batch size up to ``max_batch`` (or the served maximum, if larger) whatever
    the runtime's own maximum is. The host's speed drifts by +-25% within
    seconds, so each figure is the median of ``rounds`` short runs interleaved
    across batch sizes: a lucky peak would flatter the ceiling's denominator
    no more than an unlucky dip. The faster module at each batch size counts.
    """
    served = ModelConfig.model_validate(model_config(name))
    eager = served.model_copy(update={"optimize": "none"})
    shape = [d if d > 0 else 1 for d in served.inputs[0].shape[1:]]
    sizes = [1 << i for i in range(max(max_batch, served.batching.max_batch_size).bit_length())]
    modules = [
        load_module(config, store, torch.device("cpu"))
        for config in {served.optimize: served, "none": eager}.values()
    ]
    samples: dict[tuple[int, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for m, module in enumerate(modules):
                for bs in sizes:
                    x = torch.randn(bs, *shape)
                    for _ in range(3):
                        module(x)
                    n, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < seconds:
                        module(x)
                        n += 1
                    rate = bs * n / (time.perf_counter() - t0)
                    samples.setdefault((m, bs), []).append(rate)
    return {bs: max(statistics.median(samples[m, bs]) for m in range(len(modules))) for bs in sizes}


def measure_ceilings(store: Path, names: list[str]) -> dict[str, dict[int, float]]:
    """The raw forward pass of each model, on CPU 0 with one torch thread; printed."""
    pin(0)
    torch.set_num_threads(1)
    ceilings = {n: raw_forward(store, n) for n in names}
    for n, by_bs in ceilings.items():
        print(f"  {n}: " + ", ".join(f"bs {b}: {r:,.0f} rows/s" for b, r in by_bs.items()))
    return ceilings


def busy_sibling_ceiling(store: Path, name: str) -> float:
    """The same raw forward pass while another process spins on CPU 1.

    Not the ceiling the ratios use; it shows what the forward pass can do while
    the other CPU is busy, as it is when the runtime's event loop and the load
    generator run there (on this host a busy sibling CPU slows it by 10-40%).
    """
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import os; os.sched_setaffinity(0, {1})\nwhile True: pass"]
    )
    try:
        time.sleep(0.2)
        pin(0)
        return max(raw_forward(store, name, rounds=3).values())
    finally:
        spinner.kill()
        spinner.wait()


def request_body(
    name: str, encoding: str, rng: np.random.Generator, rows: int = 1
) -> tuple[bytes, dict[str, str], np.ndarray]:
    spec = MODELS[name]["inputs"][0]
    shape = [rows, *(d for d in spec["shape"][1:])]
    x = rng.standard_normal(shape).astype(np.float32)
    entry: dict[str, Any] = {"name": spec["name"], "shape": shape, "datatype": "FP32"}
    if encoding == "json":
        entry["data"] = x.reshape(-1).tolist()
        return json.dumps({"inputs": [entry]}).encode(), {"Content-Type": "application/json"}, x
    raw = x.tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [entry]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)),
               "Content-Type": "application/octet-stream"}  # fmt: skip
    return head + raw, headers, x


def scrape(metrics: str, name: str) -> tuple[float, float]:
    def value(metric: str) -> float:
        m = re.search(rf'^{metric}{{model="{name}",version="1"}} (\S+)$', metrics, re.M)
        return float(m.group(1)) if m else 0.0

    return value("modelfleet_batch_size_count"), value("modelfleet_batch_size_sum")


async def sweep(
    base: str,
    name: str,
    encoding: str,
    levels: list[int],
    duration: float,
    store: Path,
    rows: int = 1,
) -> list[tuple[Point, float]]:
    import aiohttp

    rng = np.random.default_rng(0)
    body, headers, x = request_body(name, encoding, rng, rows)
    config = ModelConfig.model_validate(model_config(name))
    reference = (
        load_module(config, store, torch.device("cpu"))(torch.from_numpy(x)).detach().numpy()
    )
    url = f"{base}/v2/models/{name}/infer"
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.json()
        got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(reference.shape)
        if not np.allclose(got, reference, rtol=1e-4, atol=1e-5):
            raise SystemExit(f"{name}: the runtime's answer differs from the forward pass")
        for c in levels:
            async with session.get(f"{base}/metrics") as resp:
                before = scrape(await resp.text(), name)
            point = await closed_loop(url, body, headers, c, duration)
            async with session.get(f"{base}/metrics") as resp:
                after = scrape(await resp.text(), name)
            batches, batched = after[0] - before[0], after[1] - before[1]
            out.append((point, batched / batches if batches else float("nan")))
            print(f"  {name}/{encoding} c={c:3d}: {point.throughput:8.0f} req/s  "
                  f"p50 {point.p50:6.2f} ms  p99 {point.p99:6.2f} ms  errors {point.errors}",
                  flush=True)  # fmt: skip
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the runtime exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the runtime did not become ready in time")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for case, data in results["cases"].items():
        cs = [p["concurrency"] for p in data["points"]]
        line = ax1.plot(cs, [p["ratio_to_ceiling"] for p in data["points"]], marker="o", label=case)
        ax2.plot(
            cs,
            [p["p99_ms"] for p in data["points"]],
            marker="o",
            color=line[0].get_color(),
            label=case,
        )
    ax1.axhline(1.0, color="grey", ls="--", lw=1)
    ax1.axhline(0.8, color="red", ls=":", lw=1, label="80% target")
    ax1.set(xscale="log", xlabel="concurrency", ylabel="served / raw forward ceiling",
            title="Throughput as a share of the forward-pass ceiling")  # fmt: skip
    ax2.axhline(50, color="red", ls=":", lw=1, label="50 ms")
    ax2.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 latency (ms)",
            title="p99 latency")  # fmt: skip
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--cases", default="mlp/json,cnn/json,cnn/binary")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--rows", type=int, default=1, choices=[1, 2, 4, 8, 16],
        help="rows (images) per request; the ratios count rows, so --rows 16 shows what "
        "the runtime reaches with a sixteenth of the HTTP work per row",
    )  # fmt: skip
    parser.add_argument(
        "--server", action="append", default=[], metavar="KEY=VALUE",
        help="override a server setting of the runtime, e.g. gil_switch_interval_us=20",
    )  # fmt: skip
    parser.add_argument(
        "--pin",
        action="store_true",
        help="runtime confined to CPU 0 and the load generator to CPU 1 "
        "(default: both float; the forward pass uses one torch thread either way)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    cases = [tuple(c.split("/")) for c in args.cases.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        write_examples(store)
        names = sorted({n for n, _ in cases})
        print(f"raw forward pass (CPU 0, 1 torch thread, torch {torch.__version__}):", flush=True)
        before = measure_ceilings(store, names)
        config = {
            "server": {"host": "127.0.0.1", "port": args.port, "model_store": str(store),
                       "torch_threads": 1, "memory_budget_mb": 1024},
            "models": [model_config(n) for n in names],
        }  # fmt: skip
        for item in args.server:
            key, _, value = item.partition("=")
            config["server"][key] = yaml.safe_load(value)
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(yaml.safe_dump(config))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        cmd = [sys.executable, "-m", "modelfleet", "--log-level", "WARNING", "serve",
               "--config", str(cfg)]  # fmt: skip
        if args.pin:
            cmd = ["taskset", "-c", "0", *cmd]
        else:  # the runtime would inherit CPU 0 from the ceiling measurement
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        proc = subprocess.Popen(cmd, env=env)
        served: dict[str, list[tuple[Point, float]]] = {}
        try:
            base = f"http://127.0.0.1:{args.port}"
            wait_ready(base, proc)
            if args.pin:
                pin(1)
            for name, encoding in cases:
                served[f"{name}/{encoding}"] = asyncio.run(
                    sweep(base, name, encoding, levels, args.duration, store, args.rows)
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print("raw forward pass again, after the sweep:", flush=True)
        after = measure_ceilings(store, names)
        sibling = (
            {n: busy_sibling_ceiling(store, n) for n in names} if (os.cpu_count() or 1) > 1 else {}
        )
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "torch": torch.__version__,
                               "duration_s": args.duration, "cases": {}}  # fmt: skip
    rows = []
    for case, points in served.items():
        name = case.split("/")[0]
        by_bs = {bs: (before[name][bs] + after[name][bs]) / 2 for bs in before[name]}
        best_bs = max(by_bs, key=lambda b: by_bs[b])
        ceiling, forward_ms = by_bs[best_bs], 1000 * args.rows / by_bs[args.rows]
        results["cases"][case] = {
            "ceiling_rows_per_s": ceiling, "best_batch": best_bs, "forward_ms_batch1": forward_ms,
            "ceiling_before": max(before[name].values()), "ceiling_after": max(after[name].values()),
            "ceiling_cpu1_busy": sibling.get(name), "rows_per_request": args.rows,
            "points": [],
        }  # fmt: skip
        for point, avg_batch in points:
            results["cases"][case]["points"].append({
                "concurrency": point.concurrency, "throughput": point.throughput,
                "p50_ms": point.p50, "p99_ms": point.p99, "avg_batch": avg_batch,
                "errors": point.errors,
                "ratio_to_ceiling": point.throughput * args.rows / ceiling,
            })  # fmt: skip
            rows.append([
                case, point.concurrency, f"{point.throughput:,.0f}", f"{point.p50:.2f}",
                f"{point.p99:.2f}", f"{avg_batch:.1f}",
                f"{point.throughput * args.rows / ceiling:.0%}",
                f"{point.p50 - forward_ms:+.2f}" if point.concurrency == 1 else "",
            ])  # fmt: skip
    print()
    print(table(rows, ["case", "conc", "req/s", "p50 ms", "p99 ms", "avg batch",
                       "of ceiling", "added ms (c=1)"]))  # fmt: skip
    for case, data in results["cases"].items():
        ok = [p for p in data["points"] if p["p99_ms"] <= 50]
        best = max(ok, key=lambda p: p["throughput"]) if ok else None
        summary = (f"{best['ratio_to_ceiling']:.0%} of the ceiling at c={best['concurrency']}"
                   if best else "no point with p99 <= 50 ms")  # fmt: skip
        print(f"{case}: ceiling {data['ceiling_rows_per_s']:,.0f} rows/s (batch {data['best_batch']}; "
              f"{data['ceiling_before']:,.0f} before the sweep, {data['ceiling_after']:,.0f} after); "
              f"best with p99 <= 50 ms: {summary}")  # fmt: skip
        if best and data["ceiling_cpu1_busy"]:
            busy = data["ceiling_cpu1_busy"]
            print(f"  (the forward pass alone with CPU 1 busy: {busy:,.0f} rows/s; the best point "
                  f"is {best['throughput'] * args.rows / busy:.0%} of that)")  # fmt: skip
    (out / "runtime.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "runtime.png")
    print(f"\nwrote {out / 'runtime.json'} and {out / 'runtime.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
