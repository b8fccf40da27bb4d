"""``make bench`` (runtime part): served throughput and latency against the raw forward pass.

The raw forward pass is measured first, in this process, with one torch
thread: that is the physical limit (the "ceiling") the served numbers are
divided by, measured in the same run. The runtime then serves the same model
files with one torch thread, and a closed-loop load generator sweeps the
concurrency. By default the runtime's event loop and the load generator share
the machine's CPUs with the forward thread, as HTTP handling shares a GPU
host's CPUs; ``--pin`` confines the runtime to CPU 0 and the load to CPU 1.

The requests cycle through 64 distinct images (``--inputs``) and the ceiling
is measured on the same images: this CNN's forward pass runs faster on one
repeated input than on varied ones, so neither side may repeat one.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.ceiling import Ceiling, batches_of, load_ceiling, paired_ratios
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


PROFILES: dict[str, tuple[dict[str, Any], int | None, str]] = {
    "thread": ({}, None, "the runtime's defaults (forward passes on a thread of the serving "
               "process; nothing pinned, the load generator floats)"),
    "process": ({"executor": "process", "device_cpus": [0]}, 1,
                "the CPU-host set-up (executor: process, device_cpus: [0]; the event loop "
                "and the load generator on CPU 1)"),
}  # fmt: skip
"""Server settings, the load generator's CPU (None: it floats), and what it is."""


def model_config(name: str) -> dict[str, Any]:
    spec = MODELS[name]
    return {
        "name": name, "version": "1", "source": f"{name}.safetensors",
        "queue": {"max_size": 1024, "timeout_ms": 30000}, **spec,
    }  # fmt: skip


def with_overrides(config: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``a.b=value`` of ``items`` set (values parsed as YAML)."""
    config = copy.deepcopy(config)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--model {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


def batch_sizes(name: str, max_batch: int = 32) -> list[int]:
    """Every power of two up to ``max_batch`` (or the served maximum, if larger)."""
    served = ModelConfig.model_validate(model_config(name))
    return [1 << i for i in range(max(max_batch, served.batching.max_batch_size).bit_length())]


def raw_forward(
    store: Path, name: str, seconds: float = 0.05, rounds: int = 20, max_batch: int = 32
) -> dict[int, float]:
    """Rows per second of the bare forward pass, per batch size (1 thread, CPU 0).

    Both the module as served and the plain eager module are measured, at every
    batch size up to ``max_batch`` whatever the runtime's own maximum is; each
    figure is the median of ``rounds`` short runs interleaved across batch
    sizes, and the faster module at each batch size counts.
    """
    ceiling = load_ceiling(ModelConfig.model_validate(model_config(name)), store)
    return ceiling.sweep(batch_sizes(name, max_batch), seconds, rounds)


def measure_ceilings(
    store: Path,
    names: list[str],
    overrides: list[str] | None = None,
    images: dict[str, torch.Tensor] | None = None,
    retain_mb: int | None = None,
) -> dict[str, Ceiling]:
    """Loads each model's raw forward pass (as served: with the ``--model``
    overrides), to be measured on ``images[name]``, and sweeps its batch sizes; printed."""
    ceilings = {}
    for n in names:
        served = with_overrides(model_config(n), overrides or [])
        config = ModelConfig.model_validate(served)
        ceilings[n] = load_ceiling(config, store, images=(images or {}).get(n), retain_mb=retain_mb)
        by_bs = ceilings[n].sweep(batch_sizes(n))
        print(f"  {n}: " + ", ".join(f"bs {b}: {r:,.0f} rows/s" for b, r in by_bs.items()))
    return ceilings


def request_body(
    name: str, encoding: str, rng: np.random.Generator, rows: int = 1
) -> tuple[bytes, dict[str, str], np.ndarray]:
    spec = MODELS[name]["inputs"][0]
    x = rng.standard_normal([rows, *spec["shape"][1:]]).astype(np.float32)
    body, headers = encode_request(name, encoding, x)
    return body, headers, x


def encode_request(name: str, encoding: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request carrying ``x`` as the model's input, JSON or binary."""
    spec = MODELS[name]["inputs"][0]
    entry: dict[str, Any] = {"name": spec["name"], "shape": list(x.shape), "datatype": "FP32"}
    if encoding == "json":
        entry["data"] = x.reshape(-1).tolist()
        return json.dumps({"inputs": [entry]}).encode(), {"Content-Type": "application/json"}
    raw = x.tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [entry]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)),
               "Content-Type": "application/octet-stream"}  # fmt: skip
    return head + raw, headers


def sample_images(name: str, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct input rows of ``name`` (standard normal, seeded): what the
    load generator sends and the ceiling is measured on."""
    if count < 1:
        raise SystemExit(f"--inputs {count}: at least one distinct input is needed")
    shape = MODELS[name]["inputs"][0]["shape"][1:]
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal([count, *shape]).astype(np.float32))


def request_bodies(
    name: str, encoding: str, images: torch.Tensor, rows: int = 1
) -> tuple[list[bytes], dict[str, str], list[np.ndarray]]:
    """One request per image of ``images`` (``rows`` consecutive images each,
    wrapping around), all with the same headers."""
    xs = [b.numpy() for b in batches_of(images, rows)]
    encoded = [encode_request(name, encoding, x) for x in xs]
    headers = encoded[0][1]
    if any(h != headers for _, h in encoded):
        raise ValueError("requests of one shape should share their headers")
    return [body for body, _ in encoded], headers, xs


def scrape(metrics: str, name: str) -> tuple[float, float, float]:
    """(batches, rows, forward seconds) the runtime has run for ``name`` so far."""

    def value(metric: str) -> float:
        m = re.search(rf'^{metric}{{model="{name}",version="1"}} (\S+)$', metrics, re.M)
        return float(m.group(1)) if m else 0.0

    return (
        value("modelfleet_batch_size_count"),
        value("modelfleet_batch_size_sum"),
        value("modelfleet_compute_seconds_sum"),
    )


@dataclass
class Measured:
    """One concurrency level: its served windows, each between two ceiling windows."""

    point: Point
    """All served windows pooled (throughput, p50, p99 over every request)."""
    avg_batch: float
    ratios: list[float]
    """Each window's rows/s over the mean of the ceiling windows beside it."""
    ceilings: list[float]
    forward_ms: float
    """One forward pass of a request's rows, from windows beside the served ones."""
    inside_rows_per_s: float = float("nan")
    """Rows per second of forward-pass time inside the runtime (its compute metric):
    set against the ceiling, it tells a slower forward pass from an idle device."""

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


async def measure_level(
    url: str, body: list[bytes], headers: dict[str, str], c: int, ceiling: Ceiling,
    *, rows: int, duration: float, rounds: int, bs: int,
) -> tuple[Point, list[float], list[float], list[float]]:  # fmt: skip
    """``rounds`` served windows of ``duration / rounds`` s at concurrency ``c``,
    each preceded and the last also followed by a ceiling window at batch ``bs``
    and a shorter one at ``rows`` (the forward time a request of its own would take)."""
    window_s = duration / rounds
    ceilings = [ceiling.window(bs)]
    singles = [ceiling.window(rows, 0.1)]
    points = []
    for _ in range(rounds):
        points.append(await closed_loop(url, body, headers, c, window_s, warmup_s=0.15))
        ceilings.append(ceiling.window(bs))
        singles.append(ceiling.window(rows, 0.1))
    ratios = paired_ratios([p.throughput * rows for p in points], ceilings)
    pooled = Point(
        c, sum(p.requests for p in points), sum(p.errors for p in points),
        sum(p.seconds for p in points), [ms for p in points for ms in p.latencies_ms],
    )  # fmt: skip
    return pooled, ratios, ceilings, [1000 * rows / r for r in singles]


async def sweep(
    base: str,
    name: str,
    encoding: str,
    levels: list[int],
    duration: float,
    store: Path,
    ceiling: Ceiling,
    *,
    rows: int = 1,
    rounds: int = 4,
) -> list[Measured]:
    """Each concurrency of ``levels`` against the runtime at ``base``; the requests
    cycle through the ceiling's images. Raises if the runtime's answers differ
    from the forward pass."""
    import aiohttp

    bodies, headers, xs = request_bodies(name, encoding, ceiling.images, rows)
    config = ModelConfig.model_validate(model_config(name))
    module = load_module(config, store, torch.device("cpu"))
    url = f"{base}/v2/models/{name}/infer"
    bs = ceiling.best_batch
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for body, x in list(zip(bodies, xs, strict=True))[:4]:
            async with session.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
            with torch.inference_mode():
                reference = module(torch.from_numpy(x)).numpy()
            got = np.array(answer["outputs"][0]["data"], dtype=np.float32)
            if not np.allclose(got.reshape(reference.shape), reference, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"{name}: the runtime's answer differs from the forward pass")
        for c in levels:
            async with session.get(f"{base}/metrics") as resp:
                before = scrape(await resp.text(), name)
            point, ratios, ceilings, single_ms = await measure_level(
                url, bodies, headers, c, ceiling,
                rows=rows, duration=duration, rounds=rounds, bs=bs,
            )  # fmt: skip
            async with session.get(f"{base}/metrics") as resp:
                after = scrape(await resp.text(), name)
            batches, batched, busy = (a - b for a, b in zip(after, before, strict=True))
            m = Measured(point, batched / batches if batches else float("nan"), ratios, ceilings,
                         statistics.median(single_ms),
                         batched / busy if busy else float("nan"))  # fmt: skip
            out.append(m)
            print(f"  {name}/{encoding} c={c:3d}: {point.throughput:8.0f} req/s  "
                  f"p50 {point.p50:6.2f} ms  p99 {point.p99:6.2f} ms  errors {point.errors}  "
                  f"of ceiling {m.ratio:4.0%} (windows {min(ratios):.0%}-{max(ratios):.0%}; "
                  f"ceiling {min(ceilings):,.0f}-{max(ceilings):,.0f} rows/s; forward inside "
                  f"{m.inside_rows_per_s:,.0f} rows/s)", flush=True)  # fmt: skip
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
    parser.add_argument("--duration", type=float, default=3.0,
                        help="served seconds per point, split into --rounds windows")  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=4,
        help="served windows per point, each between two ceiling windows (paired ratios)",
    )  # fmt: skip
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--profiles", default="thread,process",
        help="runtime set-ups to measure, each as its own runtime process: "
        + "; ".join(f"{k}: {v[2]}" for k, v in PROFILES.items()),
    )  # fmt: skip
    parser.add_argument("--cases", default="mlp/json,cnn/json,cnn/binary")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--rows", type=int, default=1, choices=[1, 2, 4, 8, 16],
        help="rows (images) per request; the ratios count rows, so --rows 16 shows what "
        "the runtime reaches with a sixteenth of the HTTP work per row",
    )  # fmt: skip
    parser.add_argument(
        "--inputs", type=int, default=64, metavar="N",
        help="distinct input images the load generator cycles through, and the ceiling "
        "too (default 64); 1 repeats one image, whose forward pass runs faster than "
        "varied data's on this CPU (the CNN's max pooling branches on its input)",
    )  # fmt: skip
    parser.add_argument(
        "--server", action="append", default=[], metavar="KEY=VALUE",
        help="override a server setting of the runtime, e.g. gil_switch_interval_us=20",
    )  # fmt: skip
    parser.add_argument(
        "--model", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting of every served model (dotted for nested ones), "
        "e.g. batching.max_batch_size=4",
    )  # fmt: skip
    parser.add_argument(
        "--pin",
        action="store_true",
        help="runtime confined to CPU 0 and the load generator to CPU 1 "
        "(default: both float; the forward pass uses one torch thread either way)",
    )
    parser.add_argument(
        "--load-cpu", type=int, metavar="N",
        help="run the load generator on CPU N only (e.g. the CPU the runtime's "
        "device_cpus leave to its event loop); default: it floats",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    cases = [tuple(c.split("/")) for c in args.cases.split(",")]
    profiles = [p for p in args.profiles.split(",") if p]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown or not profiles:
        parser.error(f"--profiles: unknown {unknown}; choose from {', '.join(PROFILES)}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        write_examples(store)
        names = sorted({n for n, _ in cases})
        print(f"raw forward pass (CPU 0, 1 torch thread, torch {torch.__version__}, "
              f"{args.inputs} distinct input(s)):", flush=True)  # fmt: skip
        images = {n: sample_images(n, args.inputs) for n in names}
        servers_set = dict(item.partition("=")[::2] for item in args.server)
        retain = servers_set.get("retain_freed_memory_mb")  # the ceiling retains as served
        ceilings = measure_ceilings(
            store, names, args.model, images, None if retain is None else int(retain)
        )
        served: dict[str, list[Measured]] = {}
        servers: dict[str, dict[str, Any]] = {}
        for profile in profiles:
            overrides, load_cpu, _ = PROFILES[profile]
            print(f"profile {profile}: {overrides or 'the runtime defaults'}", flush=True)
            config = {
                "server": {"host": "127.0.0.1", "port": args.port, "model_store": str(store),
                           "torch_threads": 1, "memory_budget_mb": 1024, **overrides},
                "models": [with_overrides(model_config(n), args.model) for n in names],
            }  # fmt: skip
            for item in args.server:
                key, _, value = item.partition("=")
                config["server"][key] = yaml.safe_load(value)
            servers[profile] = config["server"]
            cfg = Path(tmp) / f"bench-{profile}.yaml"
            cfg.write_text(yaml.safe_dump(config))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            cmd = [sys.executable, "-m", "modelfleet", "--log-level", "WARNING", "serve",
                   "--config", str(cfg)]  # fmt: skip
            if args.pin:
                cmd = ["taskset", "-c", "0", *cmd]
            os.sched_setaffinity(0, range(os.cpu_count() or 1))  # the runtime inherits it
            proc = subprocess.Popen(cmd, env=env)
            try:
                base = f"http://127.0.0.1:{args.port}"
                wait_ready(base, proc)
                if args.pin:
                    pin(1)
                elif args.load_cpu is not None or load_cpu is not None:
                    pin(args.load_cpu if args.load_cpu is not None else load_cpu)
                for name, encoding in cases:
                    served[f"{profile} {name}/{encoding}"] = asyncio.run(
                        sweep(base, name, encoding, levels, args.duration, store, ceilings[name],
                              rows=args.rows, rounds=args.rounds)
                    )  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "torch": torch.__version__,
                               "duration_s": args.duration, "rounds": args.rounds,
                               "distinct_inputs": args.inputs,
                               "servers": servers, "cases": {}}  # fmt: skip
    rows = []
    for case, measured in served.items():
        name = case.split(" ")[1].split("/")[0]
        ceiling = ceilings[name]
        results["cases"][case] = {
            "best_batch": ceiling.best_batch, "sweep_rows_per_s": ceiling.by_batch,
            "rows_per_request": args.rows, "points": [],
        }  # fmt: skip
        for m in measured:
            point = m.point
            results["cases"][case]["points"].append({
                "concurrency": point.concurrency, "throughput": point.throughput,
                "p50_ms": point.p50, "p99_ms": point.p99, "avg_batch": m.avg_batch,
                "errors": point.errors, "ratio_to_ceiling": m.ratio,
                "window_ratios": m.ratios, "ceiling_windows": m.ceilings,
                "forward_ms": m.forward_ms, "inside_rows_per_s": m.inside_rows_per_s,
            })  # fmt: skip
            rows.append([
                case, point.concurrency, f"{point.throughput:,.0f}", f"{point.p50:.2f}",
                f"{point.p99:.2f}", f"{m.avg_batch:.1f}", f"{m.ratio:.0%}",
                f"{min(m.ratios):.0%}-{max(m.ratios):.0%}",
                f"{statistics.median(m.ceilings):,.0f}",
                f"{point.p50 - m.forward_ms:+.2f}" if point.concurrency == 1 else "",
            ])  # fmt: skip
    print()
    print(table(rows, ["case", "conc", "req/s", "p50 ms", "p99 ms", "avg batch", "of ceiling",
                       "windows", "ceiling rows/s", "added ms (c=1)"]))  # fmt: skip
    print("(of ceiling: the median over the windows of served rows/s divided by the mean of the "
          "raw forward windows measured just before and just after it)")  # fmt: skip
    for case, data in results["cases"].items():
        ok = [p for p in data["points"] if p["p99_ms"] <= 50]
        best = max(ok, key=lambda p: p["ratio_to_ceiling"]) if ok else None
        summary = (f"{best['ratio_to_ceiling']:.0%} of the ceiling at c={best['concurrency']} "
                   f"(p99 {best['p99_ms']:.1f} ms)"
                   if best else "no point with p99 <= 50 ms")  # fmt: skip
        print(f"{case}: ceiling at batch {data['best_batch']}; best with p99 <= 50 ms: {summary}")
    (out / "runtime.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "runtime.png")
    print(f"\nwrote {out / 'runtime.json'} and {out / 'runtime.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
