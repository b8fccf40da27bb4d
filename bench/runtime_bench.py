"""``make bench`` (runtime part): served throughput and latency against the raw forward pass.

The raw forward pass is measured first, in this process, with one torch
thread: that is the physical limit (the "ceiling") the served numbers are
divided by, measured in the same run. The runtime then serves the same model
files with one torch thread, and a closed-loop load generator sweeps the
concurrency. By default the runtime's event loop and the load generator share
the machine's CPUs with the forward thread, as HTTP handling shares a GPU
host's CPUs; ``--pin`` confines the runtime to CPU 0 and the load to CPU 1.

The requests cycle through a fixed list (``bench/traffic.py``) and the ceiling
is measured on the same list: 64 distinct images for the example CNN (its
forward pass runs faster on one repeated input than on varied ones, so neither
side may repeat one), 32 for the zoo's ResNet, and for the zoo's BERT 256
sentences of seeded log-normal lengths (8..128 tokens, median 24), served with
bucket padding; its ceiling runs the same sentences as an ideal batcher would
(grouped by bucket, padded to it, full batches; ``bench/ceiling.py``).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench import grpc_load, traffic
from bench.ceiling import Ceiling, Sample, batches_of, load_ceiling, padding_overhead, paired_ratios
from bench.loadgen import Point, closed_loop, table
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.examples import write_examples
from modelfleet.runtime.loader import load_module
from modelfleet.runtime.zoo import ZOO, padded, write_zoo

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
    # The zoo's settings as they are (the runtime's defaults for these models);
    # BERT with bucket padding, the mode for variable-length traffic.
    "bert": {**copy.deepcopy(ZOO["bert"]), "batching": padded("bert")},
    "resnet": copy.deepcopy(ZOO["resnet"]),
}
"""Runtime config fields of each model the bench serves (but name, version, source)."""


@dataclass(frozen=True)
class Plan:
    """How the bench measures one model."""

    encodings: tuple[str, ...]
    """The cases ``--models`` runs (``make bench``): ``json``, ``binary`` (REST) and/or
    ``grpc`` (OIP gRPC with raw input contents, as tritonclient.grpc sends them)."""
    inputs: int
    """Distinct requests the load cycles through (and the ceiling), unless ``--inputs``."""
    levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Concurrency levels, unless ``--concurrency``."""
    sweep_max_batch: int = 32
    sweep_rounds: int = 20
    warmup: int = 2
    """Untimed forward passes before each ceiling window."""
    sentences: bool = False
    """Variable-length token ids and mask (``traffic.sentences``), not fixed-shape rows."""


PLANS: dict[str, Plan] = {
    "mlp": Plan(("json",), 64),
    "cnn": Plan(("json", "binary", "grpc"), 64),
    # Mixed lengths: each sweep sample runs every bucket at least once (one batch of
    # 32 sentences of 128 tokens alone takes ~45 ms), so fewer rounds.
    "bert": Plan(("binary",), 256, sweep_rounds=8, sentences=True),
    # 5-10 ms a row: one untimed pass before a window is enough, fewer sweep rounds,
    # and concurrency up to 8 (a closed loop of 8 already queues ~8 passes' worth).
    "resnet": Plan(("binary",), 32, levels=(1, 2, 4, 8), sweep_rounds=6, warmup=1),
}  # fmt: skip


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


@dataclass
class Traffic:
    """One model's request list: what the load generator cycles through, in turn,
    and what the ceiling is measured on."""

    name: str
    requests: list[traffic.Inputs]
    """Each request's input arrays (``rows`` rows each)."""
    images: torch.Tensor | None = None
    """Fixed-shape models: the distinct input rows (the requests take them in turn)."""

    def ceiling_inputs(self) -> dict[str, Any]:
        """What ``load_ceiling`` is measured on: the images, or the request list."""
        if self.images is not None:
            return {"images": self.images}
        return {"requests": [tuple(torch.from_numpy(a) for a in r) for r in self.requests]}

    def bodies(self, encoding: str) -> tuple[list[bytes], list[dict[str, str]]]:
        """Every request as an OIP body in ``encoding``, with its headers (none for
        ``grpc``: a serialised ModelInferRequest)."""
        specs = MODELS[self.name]["inputs"]
        if encoding == "grpc":
            return [grpc_load.infer_request(self.name, specs, r) for r in self.requests], [
                {} for _ in self.requests
            ]
        encoded = [traffic.encode(specs, r, encoding) for r in self.requests]
        return [b for b, _ in encoded], [h for _, h in encoded]


def make_traffic(name: str, count: int | None = None, rows: int = 1, seed: int = 0) -> Traffic:
    """``count`` (default: the plan's) distinct requests of ``rows`` rows for ``name``."""
    plan = PLANS[name]
    count = plan.inputs if count is None else count
    if plan.sentences:
        return Traffic(name, traffic.sentences(count, rows, seed))
    images = sample_images(name, count, seed)
    return Traffic(name, [(b.numpy(),) for b in batches_of(images, rows)], images)


def raw_forward(
    store: Path, name: str, seconds: float = 0.05, rounds: int = 20, max_batch: int = 32
) -> dict[int, float]:
    """Rows per second of the bare forward pass, per batch size (1 thread, CPU 0).

    Both the module as served and the plain eager module are measured, at every
    batch size up to ``max_batch`` whatever the runtime's own maximum is; each
    figure is the median of ``rounds`` short runs interleaved across batch
    sizes, and the faster module at each batch size counts. The inputs are the
    model's bench traffic (``make_traffic``).
    """
    config = ModelConfig.model_validate(model_config(name))
    ceiling = load_ceiling(config, store, **make_traffic(name).ceiling_inputs())
    return ceiling.sweep(batch_sizes(name, max_batch), seconds, rounds)


def measure_ceilings(
    store: Path,
    names: list[str],
    overrides: list[str] | None = None,
    traffics: dict[str, Traffic] | None = None,
    retain_mb: int | None = None,
) -> dict[str, Ceiling]:
    """Loads each model's raw forward pass (as served: with the ``--model``
    overrides), to be measured on ``traffics[name]``, and sweeps its batch sizes;
    printed. For padded traffic it also prints the padding's cost: positions
    computed per real one, and the ceiling without padding (exact-length batches)."""
    ceilings = {}
    for n in names:
        plan = PLANS[n]
        served = with_overrides(model_config(n), overrides or [])
        config = ModelConfig.model_validate(served)
        inputs = (traffics[n] if traffics else make_traffic(n)).ceiling_inputs()
        ceilings[n] = load_ceiling(config, store, retain_mb=retain_mb, warmup=plan.warmup,
                                   **inputs)  # fmt: skip
        by_bs = ceilings[n].sweep(batch_sizes(n, plan.sweep_max_batch), rounds=plan.sweep_rounds)
        print(f"  {n}: " + ", ".join(f"bs {b}: {r:,.0f} rows/s" for b, r in by_bs.items()),
              flush=True)  # fmt: skip
        print(f"  {n}: one pass (slowest group): " + ", ".join(
            f"bs {b}: {ms:.1f} ms" for b, ms in ceilings[n].longest_pass_ms.items()),
            flush=True)  # fmt: skip
        if config.batching.pad is not None and "requests" in inputs:
            report = padding_report(ceilings[n], inputs["requests"])
            ceilings[n].padding = report
            print(f"  {n}: {report['summary']}", flush=True)
    return ceilings


def padding_report(ceiling: Ceiling, requests: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    """What bucket padding costs on this traffic: positions computed per real one,
    and the padded ceiling against exact-length batches (no padding, every
    length its own group) at the best batch size and at batch 1, measured in
    alternation (5 pairs)."""
    exact = Ceiling(ceiling.config, ceiling.modules, ceiling.cpu, requests=requests, pad=False,
                    warmup=ceiling.warmup)  # fmt: skip
    bs = ceiling.best_batch
    exact.best_module = dict(ceiling.best_module)
    pairs: dict[str, list[float]] = {"padded": [], "exact": [], "padded_ms": [], "exact_ms": []}
    for _ in range(5):
        pairs["padded"].append(ceiling.window(bs))
        pairs["exact"].append(exact.window(bs))
        pairs["padded_ms"].append(ceiling.request_ms(ceiling.measure(1, 0.1)))
        pairs["exact_ms"].append(exact.request_ms(exact.measure(1, 0.1)))
    med = {k: statistics.median(v) for k, v in pairs.items()}
    tokens = padding_overhead(ceiling.config, requests)
    return {
        "tokens_computed_per_real": tokens, "batch": bs,
        "padded_rows_per_s": med["padded"], "exact_rows_per_s": med["exact"],
        "padded_request_ms": med["padded_ms"], "exact_request_ms": med["exact_ms"],
        "summary": f"padding computes {tokens:.2f} positions per real token; at batch {bs} "
        f"the padded ceiling is {med['padded']:,.0f} rows/s against {med['exact']:,.0f} for "
        f"exact-length batches ({med['padded'] / med['exact']:.0%}); one request alone: "
        f"median {med['padded_ms']:.2f} ms padded, {med['exact_ms']:.2f} ms unpadded",
    }  # fmt: skip


def request_body(
    name: str, encoding: str, rng: np.random.Generator, rows: int = 1
) -> tuple[bytes, dict[str, str], np.ndarray]:
    """A request of ``rows`` random rows for a model of one fixed-shape input."""
    spec = MODELS[name]["inputs"][0]
    x = rng.standard_normal([rows, *spec["shape"][1:]]).astype(np.float32)
    body, headers = encode_request(name, encoding, x)
    return body, headers, x


def encode_request(name: str, encoding: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request carrying ``x`` as the model's (first) input, JSON or binary."""
    return traffic.encode(MODELS[name]["inputs"][:1], [x], encoding)


def sample_images(name: str, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct input rows of ``name`` (standard normal, seeded): what the
    load generator sends and the ceiling is measured on."""
    if count < 1:
        raise SystemExit(f"--inputs {count}: at least one distinct input is needed")
    shape = MODELS[name]["inputs"][0]["shape"][1:]
    return torch.from_numpy(traffic.dense(shape, count, seed))


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
    """One forward pass of a request alone (the median over the request list),
    from windows beside the served ones."""
    inside_rows_per_s: float = float("nan")
    """Rows per second of forward-pass time inside the runtime (its compute metric):
    set against the ceiling, it tells a slower forward pass from an idle device."""
    load_average: float = float("nan")
    """The host's 1-minute load average just after the point (the bench's own
    processes count: about 2 while it measures)."""
    inside_ms: float = float("nan")
    """Mean forward time of one batch inside the runtime (its compute metric)."""
    forward_mean_ms: float = float("nan")
    """As ``forward_ms``, the mean over the request list: at concurrency 1 (batches
    of one request) ``inside_ms`` minus this is how much slower the forward pass
    runs inside the runtime, and ``point.p50 - inside_ms`` roughly the serving path."""

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


async def served_window(
    url: str, body: list[bytes], headers: dict[str, str] | Sequence[dict[str, str]], c: int,
    window_s: float,
) -> Point:  # fmt: skip
    """One closed-loop window: HTTP for an ``http://`` URL, else gRPC to ``host:port``."""
    if url.startswith("http"):
        return await closed_loop(url, body, headers, c, window_s, warmup_s=0.15)
    return await grpc_load.closed_loop(url, body, c, window_s, warmup_s=0.15)


async def measure_level(
    url: str, body: list[bytes], headers: dict[str, str] | Sequence[dict[str, str]], c: int,
    ceiling: Ceiling, *, rows: int, duration: float, rounds: int, bs: int,
) -> tuple[Point, list[float], list[float], list[Sample]]:  # fmt: skip
    """``rounds`` served windows of ``duration / rounds`` s at concurrency ``c``,
    each preceded and the last also followed by a ceiling window at batch ``bs``
    and a shorter one at ``rows`` (the forward time a request of its own would take)."""
    window_s = duration / rounds
    ceilings = [ceiling.window(bs)]
    singles = [ceiling.measure(rows, 0.1)]
    points = []
    for _ in range(rounds):
        points.append(await served_window(url, body, headers, c, window_s))
        ceilings.append(ceiling.window(bs))
        singles.append(ceiling.measure(rows, 0.1))
    ratios = paired_ratios([p.throughput * rows for p in points], ceilings)
    pooled = Point(
        c, sum(p.requests for p in points), sum(p.errors for p in points),
        sum(p.seconds for p in points), [ms for p in points for ms in p.latencies_ms],
    )  # fmt: skip
    return pooled, ratios, ceilings, singles


def checked_requests(ceiling: Ceiling, count: int = 4) -> list[int]:
    """Which requests to check against the forward pass: the first ``count``, and
    the first of every batch group (bucket) they miss."""
    picked = list(range(min(count, len(ceiling.request_groups))))
    seen = {ceiling.request_groups[i] for i in picked}
    for i, group in enumerate(ceiling.request_groups):
        if group not in seen:
            seen.add(group)
            picked.append(i)
    return picked


async def sweep(
    base: str,
    name: str,
    encoding: str,
    levels: list[int],
    duration: float,
    store: Path,
    ceiling: Ceiling,
    load: Traffic,
    *,
    rows: int = 1,
    rounds: int = 4,
    grpc_target: str | None = None,
    metrics_base: str | None = None,
) -> list[Measured]:
    """Each concurrency of ``levels`` against the runtime at ``base`` (its gRPC API at
    ``grpc_target`` for the ``grpc`` encoding); the requests cycle through ``load``.
    Raises if the runtime's answers differ from the forward pass of each request alone.
    ``metrics_base``: the runtime's own URL when ``base`` is a gateway in front of it."""
    import aiohttp

    from modelfleet.runtime.forward import forward

    bodies, headers = load.bodies(encoding)
    config = ModelConfig.model_validate(model_config(name))
    module = load_module(config, store, torch.device("cpu"))
    url = f"{base}/v2/models/{name}/infer"
    if encoding == "grpc":
        if grpc_target is None:
            raise SystemExit(f"{name}/grpc: the runtime has no gRPC port")
        url = grpc_target
    bs = ceiling.best_batch
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in checked_requests(ceiling):
            if encoding == "grpc":
                answer = grpc_load.decode_answer(await grpc_load.infer(url, bodies[i]))
            else:
                async with session.post(url, data=bodies[i], headers=headers[i]) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"{name}: the runtime answered {resp.status}: "
                                         f"{await resp.text()}")  # fmt: skip
                    answer = traffic.decode_response(await resp.read(), resp.headers)
            reference = forward(module, list(load.requests[i]), config.outputs, torch.device("cpu"))
            for spec, want in zip(config.outputs, reference, strict=True):
                got = answer[spec.name]
                if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                    raise SystemExit(f"{name}: the runtime's {spec.name} differs from the "
                                     f"forward pass (request {i})")  # fmt: skip
        for c in levels:
            async with session.get(f"{metrics_base or base}/metrics") as resp:
                before = scrape(await resp.text(), name)
            point, ratios, ceilings, singles = await measure_level(
                url, bodies, headers, c, ceiling,
                rows=rows, duration=duration, rounds=rounds, bs=bs,
            )  # fmt: skip
            async with session.get(f"{metrics_base or base}/metrics") as resp:
                after = scrape(await resp.text(), name)
            batches, batched, busy = (a - b for a, b in zip(after, before, strict=True))
            m = Measured(
                point, batched / batches if batches else float("nan"), ratios, ceilings,
                forward_ms=statistics.median(ceiling.request_ms(s) for s in singles),
                inside_rows_per_s=batched / busy if busy else float("nan"),
                load_average=os.getloadavg()[0],
                inside_ms=1000 * busy / batches if batches else float("nan"),
                forward_mean_ms=statistics.median(ceiling.request_mean_ms(s) for s in singles),
            )  # fmt: skip
            out.append(m)
            print(f"  {name}/{encoding} c={c:3d}: {point.throughput:8.0f} req/s  "
                  f"p50 {point.p50:6.2f} ms  p99 {point.p99:6.2f} ms  errors {point.errors}  "
                  f"of ceiling {m.ratio:4.0%} (windows {min(ratios):.0%}-{max(ratios):.0%}; "
                  f"ceiling {min(ceilings):,.0f}-{max(ceilings):,.0f} rows/s; forward inside "
                  f"{m.inside_rows_per_s:,.0f} rows/s; avg batch {m.avg_batch:.1f}; "
                  f"load {m.load_average:.2f})"
                  + (f"\n    c=1: forward inside {m.inside_ms:.2f} ms a batch against "
                     f"{m.forward_mean_ms:.2f} ms raw (means); p50 {point.p50:.2f} ms"
                     if c == 1 else ""),
                  flush=True)  # fmt: skip
    return out


def start_gateway(
    tmp: Path, names: list[str], runtime: str, runtime_grpc: str, port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, str]:
    """A gateway routing every model to the runtime (REST and gRPC), as the operator
    would write its routes; returns the process, its URL and its gRPC target. It
    floats over the CPUs like the runtime (a gateway pod shares the node)."""
    document = {
        "server": {"host": "127.0.0.1", "port": port, "grpc_port": port + 1},
        "models": {n: {"max_concurrency": 1024, "max_waiting": 1024, "versions": [
            {"version": "1", "endpoints": [runtime], "grpc_endpoints": [runtime_grpc]}]}
            for n in names},
    }  # fmt: skip
    routes = tmp / "routes.yaml"
    routes.write_text(yaml.safe_dump(document))
    cmd = [sys.executable, "-m", "modelfleet", "--log-level", "WARNING", "gateway",
           "--routes", str(routes)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout=60)
    print(f"gateway in front of the runtime: {url}, gRPC 127.0.0.1:{port + 1}", flush=True)
    return proc, url, f"127.0.0.1:{port + 1}"


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


SLO_MS = 50.0
"""The p99 bound the ratios are read at."""


def best_point(points: list[dict[str, Any]], slo_ms: float = SLO_MS) -> dict[str, Any] | None:
    """The point with the highest ratio to the ceiling among those with p99 <= ``slo_ms``."""
    ok = [p for p in points if p["p99_ms"] <= slo_ms and p["throughput"] > 0]
    return max(ok, key=lambda p: p["ratio_to_ceiling"]) if ok else None


def parse_cases(cases: str | None, models: str) -> list[tuple[str, str]]:
    """``--cases`` (name/encoding, ...) if given, else every plan encoding of ``--models``."""
    if cases:
        out = []
        for case in cases.split(","):
            name, sep, encoding = case.partition("/")
            if not sep or name not in MODELS or encoding not in ("json", "binary", "grpc"):
                raise SystemExit(f"--cases {case!r}: expected MODEL/json, MODEL/binary or "
                                 "MODEL/grpc, "
                                 f"MODEL one of {', '.join(MODELS)}")  # fmt: skip
            out.append((name, encoding))
        return out
    names = [n for n in models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    return [(n, e) for n in names for e in PLANS[n].encodings]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="served seconds per point, split into --rounds windows")  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=4,
        help="served windows per point, each between two ceiling windows (paired ratios)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", default=None,
        help="comma-separated levels for every case (default: each model's, "
        + "; ".join(f"{n}: {','.join(map(str, p.levels))}" for n, p in PLANS.items()) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--profiles", default="thread,process",
        help="runtime set-ups to measure, each as its own runtime process: "
        + "; ".join(f"{k}: {v[2]}" for k, v in PROFILES.items()),
    )  # fmt: skip
    parser.add_argument(
        "--models", default="mlp,cnn,bert,resnet",
        help="models to measure, each in its default encodings ("
        + "; ".join(f"{n}: {', '.join(p.encodings)}" for n, p in PLANS.items()) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--cases", default=None,
        help="MODEL/ENCODING,... instead of --models, e.g. cnn/binary,bert/json",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=18080, help="REST port (gRPC: port + 1)")
    parser.add_argument(
        "--rows", type=int, default=1, choices=[1, 2, 4, 8, 16],
        help="rows (images, sentences) per request; the ratios count rows, so --rows 16 "
        "shows what the runtime reaches with a sixteenth of the HTTP work per row",
    )  # fmt: skip
    parser.add_argument(
        "--inputs", type=int, default=None, metavar="N",
        help="distinct requests the load generator cycles through, and the ceiling "
        "too (default: " + ", ".join(f"{n} {p.inputs}" for n, p in PLANS.items()) + "); "
        "1 repeats one image, whose forward pass runs faster than varied data's on this "
        "CPU (the CNN's max pooling branches on its input)",
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
    parser.add_argument(
        "--via-gateway", action="store_true",
        help="send the load through a gateway process in front of the runtime (REST and "
        "gRPC; results in runtime-via-gateway.json/.png)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    if args.inputs is not None and args.inputs < 1:
        parser.error(f"--inputs {args.inputs}: at least one distinct input is needed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = parse_cases(args.cases, args.models)
    levels_for = {n: [int(c) for c in args.concurrency.split(",")] if args.concurrency
                  else list(PLANS[n].levels) for n, _ in cases}  # fmt: skip
    profiles = [p for p in args.profiles.split(",") if p]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown or not profiles:
        parser.error(f"--profiles: unknown {unknown}; choose from {', '.join(PROFILES)}")
    cpus = os.sched_getaffinity(0)  # as started (e.g. under taskset), restored for the runtime
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        write_examples(store)
        names = sorted({n for n, _ in cases})
        if any(n in ZOO for n in names):
            write_zoo(store)
        traffics = {n: make_traffic(n, args.inputs, args.rows) for n in names}
        print(f"raw forward pass (CPU 0, 1 torch thread, torch {torch.__version__}; distinct "
              + ", ".join(f"{n} {len(t.requests)}" for n, t in traffics.items())
              + f"; load average {load_before[0]:.2f}):", flush=True)  # fmt: skip
        servers_set = dict(item.partition("=")[::2] for item in args.server)
        retain = servers_set.get("retain_freed_memory_mb")  # the ceiling retains as served
        ceilings = measure_ceilings(
            store, names, args.model, traffics, None if retain is None else int(retain)
        )
        served: dict[str, list[Measured]] = {}
        servers: dict[str, dict[str, Any]] = {}
        for profile in profiles:
            overrides, load_cpu, _ = PROFILES[profile]
            print(f"profile {profile}: {overrides or 'the runtime defaults'}", flush=True)
            config: dict[str, Any] = {
                "server": {"host": "127.0.0.1", "port": args.port, "grpc_port": args.port + 1,
                           "model_store": str(store),
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
            os.sched_setaffinity(0, cpus)  # the runtime inherits it
            proc = subprocess.Popen(cmd, env=env)
            gateway: subprocess.Popen[bytes] | None = None
            try:
                base = runtime_base = f"http://127.0.0.1:{args.port}"
                grpc_target = f"127.0.0.1:{args.port + 1}"
                wait_ready(base, proc, timeout=180)
                if args.via_gateway:
                    gateway, base, grpc_target = start_gateway(
                        Path(tmp), names, runtime_base, grpc_target, args.port + 2, env
                    )
                if args.pin:
                    pin(1)
                elif args.load_cpu is not None:
                    pin(args.load_cpu)
                elif load_cpu is not None:
                    pin(load_cpu)
                for name, encoding in cases:
                    served[f"{profile} {name}/{encoding}"] = asyncio.run(
                        sweep(base, name, encoding, levels_for[name], args.duration, store,
                              ceilings[name], traffics[name], rows=args.rows, rounds=args.rounds,
                              grpc_target=grpc_target, metrics_base=runtime_base)
                    )  # fmt: skip
            finally:
                if gateway is not None:
                    gateway.terminate()
                    gateway.wait(timeout=30)
                proc.terminate()
                proc.wait(timeout=30)
    load_after = os.getloadavg()
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "torch": torch.__version__,
                               "started": started, "load_average_before": load_before,
                               "load_average_after": load_after,
                               "duration_s": args.duration, "rounds": args.rounds,
                               "distinct_inputs": {n: len(t.requests) for n, t in traffics.items()},
                               "servers": servers, "cases": {}, "traffic": {}}  # fmt: skip
    for n, load in traffics.items():
        if load.images is None:
            lengths = [int(r[0].shape[1]) for r in load.requests]
            results["traffic"][n] = {
                "lengths": lengths, "median_length": statistics.median(lengths),
                "padding": ceilings[n].padding,
            }  # fmt: skip
    rows = []
    for case, measured in served.items():
        name = case.split(" ")[1].split("/")[0]
        ceiling = ceilings[name]
        results["cases"][case] = {
            "best_batch": ceiling.best_batch, "sweep_rows_per_s": ceiling.by_batch,
            "sweep_longest_pass_ms": ceiling.longest_pass_ms,
            "within_half_slo": ceiling.within(SLO_MS / 2),
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
                "added_ms": point.p50 - m.forward_ms, "load_average": m.load_average,
                "inside_ms_per_batch": m.inside_ms, "forward_mean_ms": m.forward_mean_ms,
            })  # fmt: skip
            rows.append([
                case, point.concurrency, f"{point.throughput:,.0f}", f"{point.p50:.2f}",
                f"{point.p99:.2f}", f"{m.avg_batch:.1f}", f"{m.ratio:.0%}",
                f"{min(m.ratios):.0%}-{max(m.ratios):.0%}",
                f"{statistics.median(m.ceilings):,.0f}", f"{m.inside_rows_per_s:,.0f}",
                f"{point.p50 - m.forward_ms:+.2f}" if point.concurrency == 1 else "",
            ])  # fmt: skip
    print()
    print(table(rows, ["case", "conc", "req/s", "p50 ms", "p99 ms", "avg batch", "of ceiling",
                       "windows", "ceiling rows/s", "inside rows/s",
                       "added ms (c=1)"]))  # fmt: skip
    print("(of ceiling: the median over the windows of served rows/s divided by the mean of the "
          "raw forward windows measured just before and just after it; inside: rows per "
          "second of the runtime's own forward time (modelfleet_compute_seconds); added: "
          "p50 at c=1 minus the median forward pass of one request alone)")  # fmt: skip
    for case, data in results["cases"].items():
        best = best_point(data["points"])
        c1 = [p for p in data["points"] if p["concurrency"] == 1]
        data["best"] = best
        summary = (f"{best['ratio_to_ceiling']:.0%} of the ceiling at c={best['concurrency']} "
                   f"(p99 {best['p99_ms']:.1f} ms)"
                   if best else "no point with p99 <= 50 ms")  # fmt: skip
        ok_ratio = best is not None and best["ratio_to_ceiling"] >= 0.8
        added = f"; added at c=1 {c1[0]['added_ms']:+.2f} ms" if c1 else ""
        target = " [80% met]" if ok_ratio else " [80% MISSED]"
        if c1 and case.endswith(("/binary", "/grpc")):
            target += " [1.5 ms met]" if c1[0]["added_ms"] <= 1.5 else " [1.5 ms MISSED]"
        print(f"{case}: ceiling at batch {data['best_batch']}; best with p99 <= 50 ms: "
              f"{summary}{added}{target}")  # fmt: skip
        fits = data["within_half_slo"]
        if best and fits and fits[0] != data["best_batch"]:
            share = best["throughput"] * args.rows / fits[1]
            print(
                f"  (the sweep's best batch whose forward pass fits {SLO_MS / 2:.0f} ms: "
                f"{fits[0]}, {fits[1]:,.0f} rows/s; the best point is {share:.0%} of that)"
            )
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
        f"(1 min; {os.cpu_count()} CPUs)"
    )
    stem = "runtime-via-gateway" if args.via_gateway else "runtime"
    results["via_gateway"] = args.via_gateway
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    plot(results, out / f"{stem}.png")
    print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
