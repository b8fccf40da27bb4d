"""``make bench-peers``: ModelFleet's runtime side by side with LitServe, MLServer
and Ray Serve (and PyTriton when it runs here), on the same model file, the same
machine and the same closed-loop load.

Fair rules: every server loads the same safetensors file into the same
architecture with one torch thread; every answer is checked against the
reference forward pass (a wrong answer fails the run); each server's whole
process tree runs on CPU 0 (``taskset``) and the load generator on CPU 1.
First identical batching settings (max batch 16, max wait 2 ms, one inference
worker; Ray with max_ongoing_requests >= 2x the batch), then each at its best
settings. Metrics: throughput with p99 at or under 20/50/100 ms, and the
overhead floor (p50 at concurrency 1 minus the raw forward time), each as a
ratio to the raw forward throughput measured in the same run; median and
spread over the repetitions.

Models (``--models``): the example CNN, one image a request (as every server
here accepts it), and the zoo's BERT with variable lengths: the request list
of ``make bench`` (``bench/traffic.py``: 256 sentences of 8..128 tokens,
median 24, one a request, JSON), every answer (``pooled``, and ``tokens`` of
the request's own length) checked against the request's unbatched forward
pass before the load, with 16 requests in flight so that batches mix lengths.
Its ceiling is the padded one of ``make bench`` (``bench/ceiling.py``: the
list grouped by bucket, padded to it, full batches) and the floor subtracts
the median forward pass of one request alone, unpadded. Each server batches
the lengths its own way (``HANDLING``); before the load the bench also runs
each one as it batches fixed shapes (``AS_IS``) and records what happens:
the answers right, wrong, or refused, and the server's error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.ceiling import Ceiling, load_ceiling, padding_overhead
from bench.loadgen import Point, build_request, closed_loop, exchange, open_loop, table
from bench.runtime_bench import (
    PLANS,
    batch_sizes,
    make_traffic,
    model_config,
    pin,
    raw_forward,
    request_body,
)
from bench.sources import pythonpath
from bench.traffic import decode_response
from modelfleet.runtime.examples import write_examples
from modelfleet.runtime.zoo import write_zoo

ROOT = Path(__file__).resolve().parents[1]
SLOS_MS = (20, 50, 100)
PEERS = ("modelfleet", "litserve", "mlserver", "ray", "pytriton")
MODELS = ("cnn", "mlp", "bert")
SEQUENCES = ("bert",)
"""Models whose requests vary in length (``ids`` and ``mask`` [rows, length])."""
SCRIPTS = {
    "litserve": "bench.peers.servers.litserve_server",
    "mlserver": "bench.peers.servers.mlserver_server",
    "ray": "bench.peers.servers.ray_server",
}
# Each runtime at its best: what its documentation recommends for small CPU models.
BEST: dict[str, dict[str, Any]] = {
    "modelfleet": {"max_wait_ms": 2.0, "extra": {"optimize": "trace"}},
    "litserve": {"max_wait_ms": 1.0},
    "mlserver": {"max_wait_ms": 1.0},
    "ray": {"max_wait_ms": 1.0},
}
BEST_FOR: dict[str, dict[str, dict[str, Any]]] = {
    # The zoo's own settings for it (padded("bert"): 5 ms); no tracing for variable shapes.
    "bert": {"modelfleet": {"max_wait_ms": 5.0}},
}
"""Per model, the peers whose best settings differ from ``BEST``."""
HANDLING = {
    "modelfleet": "batching.pad (zoo.padded('bert')): a batch holds one bucket (16/32/64/128 "
    "tokens), each request padded to it with 0 (ids, mask); tokens cut back per request",
    "litserve": "batch() keeps LitServe's list of decoded requests; predict pads them to "
    "the batch's longest with 0 (ids, mask), one forward pass; tokens cut back per request",
    "mlserver": "adaptive batching off (max_batch_size 1, MLServer's default): one request a "
    "forward pass, no padding; the adaptive batcher merges requests before predict sees "
    "them, so the model cannot pad them",
    "ray": "@serve.batch hands the method the list of requests; it pads them to the batch's "
    "longest with 0 (ids, mask), one forward pass; tokens cut back per request",
}
"""What each server of the bench does with requests of different lengths."""
AS_IS = {
    "modelfleet": "the zoo's batching without pad: a batch only holds requests of one exact "
    "shape (Triton's rule)",
    "litserve": "decode_request gives one tensor a request; LitServe's default batch() "
    "stacks them (torch.stack)",
    "mlserver": "adaptive batching on (max batch 16, 2 ms), the model as for fixed shapes",
    "ray": "@serve.batch's list concatenated with numpy, as the CNN's server does",
}
"""The same servers batching as they batch fixed shapes: what the probe runs."""
RTOL, ATOL = 1e-4, 1e-5
"""How close every answer must be to the reference forward pass."""


def peer_venvs(wanted: Sequence[str]) -> dict[str, Path]:
    """Each wanted peer's environment (``bench/peers/venvs.sh`` builds them, once)."""
    if not set(wanted) - {"modelfleet"}:
        return {"modelfleet": Path(sys.executable).parents[1]}
    result = subprocess.run(
        ["bash", str(ROOT / "bench/peers/venvs.sh")], capture_output=True, text=True
    )
    sys.stderr.write(result.stderr)
    venvs = {"modelfleet": Path(sys.executable).parents[1]}
    for line in result.stdout.splitlines():
        name, _, path = line.partition(" ")
        venvs[name] = Path(path)
    return venvs


def peer_versions() -> dict[str, str]:
    """Each peer's pinned requirement (``bench/peers/requirements-<peer>.txt``)."""
    out = {}
    for path in sorted((ROOT / "bench/peers").glob("requirements-*.txt")):
        out[path.stem.removeprefix("requirements-")] = path.read_text().strip()
    return out


def modelfleet_config(model: str, store: Path, port: int, wait_ms: float,
                      extra: dict[str, Any], lengths: str = "handled") -> dict[str, Any]:  # fmt: skip
    """The runtime's config serving ``model`` as the bench does: max batch 16,
    ``wait_ms``, eager unless ``extra`` says otherwise; ``lengths`` ``as-is``
    drops the bucket padding (a batch then holds one exact shape)."""
    config = model_config(model)
    config["batching"] = {**config["batching"], "max_batch_size": 16,
                          "max_queue_delay_ms": wait_ms}  # fmt: skip
    if lengths == "as-is":
        config["batching"].pop("pad", None)
    config["optimize"] = "none"
    config.update(extra)
    return {"server": {"host": "127.0.0.1", "port": port, "model_store": str(store),
                       "torch_threads": 1}, "models": [config]}  # fmt: skip


def start(peer: str, venv: Path, model: str, store: Path, port: int, wait_ms: float,
          extra: dict[str, Any], tmp: Path,
          lengths: str = "handled") -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "PYTHONPATH": pythonpath(),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
    python = str(venv / "bin/python")
    if peer == "modelfleet":
        doc = modelfleet_config(model, store, port, wait_ms, extra, lengths)
        path = tmp / f"modelfleet-{port}.yaml"
        path.write_text(yaml.safe_dump(doc))
        cmd = [python, "-m", "modelfleet", "--log-level", "WARNING", "serve", "--config", str(path)]
    else:
        cmd = [python, "-m", SCRIPTS[peer], "--model", model, "--model-dir", str(store),
               "--port", str(port), "--max-batch", "16", "--max-wait-ms", str(wait_ms),
               "--lengths", lengths]  # fmt: skip
    log = open(log_path(tmp, peer, port), "w")  # noqa: SIM115
    return subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def log_path(tmp: Path, peer: str, port: int) -> Path:
    return tmp / f"{peer}-{port}.log"


RAY_LOGS = "/tmp/ray/session_*/logs/serve/replica_*.log"
"""Where Ray Serve's replicas log their exceptions (not to the driver's output)."""


def server_logs(tmp: Path, peer: str, port: int, since: float) -> list[Path]:
    """The server's own output, and for Ray the replica logs written since ``since``."""
    logs = [log_path(tmp, peer, port)]
    if peer == "ray":
        found = (Path(p) for p in glob.glob(RAY_LOGS))
        logs += sorted(p for p in found if p.stat().st_mtime >= since)
    return logs


def last_error(*logs: Path) -> str | None:
    """The last exception line (``SomethingError: ...``) the logs hold, if any."""
    found = None
    pattern = re.compile(r"\b(\w+(?:Error|Exception)(?::\s.*)?)$")
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            match = pattern.search(line.strip())
            if match and not line.lstrip().startswith(("File ", "raise ", "During ")):
                found = match.group(1)[:400]
    return found


# -- the requests and their answers ----------------------------------------------


@dataclass
class Workload:
    """What the load generator cycles through for one model, and the answer each
    request must get."""

    model: str
    bodies: list[bytes]
    headers: list[dict[str, str]]
    answers: list[dict[str, np.ndarray]]
    """The reference forward pass of each request alone, by output name."""

    @property
    def url_path(self) -> str:
        return f"/v2/models/{self.model}/infer"


def workload(model: str, store: Path, count: int | None = None) -> Workload:
    """The bench's requests for ``model`` (OIP JSON) with their reference answers:
    one random image for the fixed-shape models, ``make bench``'s sentence list
    (``count`` sentences, default 256) for a sequence model."""
    from modelfleet.runtime.config import ModelConfig
    from modelfleet.runtime.loader import load_module

    config = ModelConfig.model_validate({**model_config(model), "optimize": "none"})
    module = load_module(config, store, torch.device("cpu"))
    if model in SEQUENCES:
        load = make_traffic(model, count)
        bodies, headers = load.bodies("json")
        inputs = [tuple(torch.from_numpy(a) for a in r) for r in load.requests]
    else:
        body, head, x = request_body(model, "json", np.random.default_rng(0))
        bodies, headers, inputs = [body], [head], [(torch.from_numpy(x),)]
    answers = []
    with torch.inference_mode():
        for args in inputs:
            out = module(*args)
            if not isinstance(out, dict):
                out = {config.outputs[0].name: out}
            answers.append({k: v.numpy().copy() for k, v in out.items()})
    return Workload(model, bodies, headers, answers)


def mismatch(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> str | None:
    """Why an answer is not the reference one (a missing output, another shape, a
    value off by more than RTOL/ATOL), or None when it is."""
    for name, ref in want.items():
        if name not in got:
            return f"no output {name!r} (got {sorted(got)})"
        if tuple(got[name].shape) != tuple(ref.shape):
            return f"{name!r} has shape {list(got[name].shape)}, expected {list(ref.shape)}"
        if not np.allclose(got[name], ref, rtol=RTOL, atol=ATOL):
            worst = float(np.max(np.abs(got[name].astype(np.float64) - ref)))
            return f"{name!r} differs from the reference by up to {worst:.3g}"
    return None


@dataclass
class Verdict:
    """Every request of a workload sent once (or more), each answer checked."""

    ok: int = 0
    wrong: int = 0
    refused: int = 0
    first_wrong: str | None = None
    first_refusal: str | None = None
    failure: str | None = None
    """Why nothing could be sent (the server did not start or answer)."""
    server_error: str | None = None
    """The last exception line in the server's log, if any."""

    @property
    def sent(self) -> int:
        return self.ok + self.wrong + self.refused

    def summary(self) -> str:
        parts = [
            f"did not serve: {self.failure}" if self.failure else f"{self.ok} of {self.sent} right"
        ]
        if self.wrong:
            parts.append(f"{self.wrong} wrong (first: {self.first_wrong})")
        if self.refused:
            parts.append(f"{self.refused} refused (first: {self.first_refusal})")
        if self.server_error:
            parts.append(f"server log: {self.server_error}")
        return "; ".join(parts)


async def verify(
    url: str, load: Workload, concurrency: int = 16, per_request_s: float = 60
) -> Verdict:
    """Sends every request of ``load`` once (at least ``2 x concurrency`` requests,
    cycling) over ``concurrency`` connections, and checks each answer: with more
    than one in flight, the server's batches mix the requests' lengths."""
    total = max(len(load.bodies), 2 * concurrency)
    raws = [build_request(url, b, h) for b, h in zip(load.bodies, load.headers, strict=True)]
    host, port, _ = raws[0]
    verdict = Verdict()
    todo = iter(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in todo:
                k = i % len(raws)
                try:
                    status, body = await asyncio.wait_for(
                        exchange(reader, writer, raws[k][2]), per_request_s
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    status, body = 0, repr(exc).encode()
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                if status != 200:
                    verdict.refused += 1
                    text = body.decode(errors="replace").strip()[:300]
                    verdict.first_refusal = verdict.first_refusal or f"HTTP {status}: {text}"
                    continue
                try:
                    problem = mismatch(decode_response(body, {}), load.answers[k])
                except (ValueError, KeyError, TypeError) as exc:
                    problem = f"unreadable answer ({exc!r}): {body[:200]!r}"
                if problem is None:
                    verdict.ok += 1
                else:
                    verdict.wrong += 1
                    verdict.first_wrong = verdict.first_wrong or f"request {k}: {problem}"
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return verdict


def wait_ready(url: str, load: Workload, proc: subprocess.Popen[bytes],
               timeout: float = 180) -> None:  # fmt: skip
    """Until the server answers the first request with a 200 (whatever the answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=load.bodies[0], headers=load.headers[0])
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
                return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.5)
    raise RuntimeError("not ready in time")


# -- processes -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else []:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ends the server and every process it started (Ray's raylet, GCS and workers
    leave its process group), by process id."""
    below = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# -- the ceiling and the metrics ---------------------------------------------------


def measure_ceiling(model: str, store: Path, count: int | None = None) -> dict[str, Any]:
    """The raw forward pass (CPU 0, one torch thread): rows/s per batch size, the
    best of them (the ceiling) and ``forward_ms``, one request alone. For a
    sequence model: on the sentence list grouped and padded by bucket, as the
    runtime pads (``bench/ceiling.py``); ``forward_ms`` is the median over the
    list of one sentence alone, unpadded (padded beside it)."""
    if model not in SEQUENCES:
        by_bs = raw_forward(store, model)
        return {"ceiling_rows_per_s": max(by_bs.values()), "forward_ms": 1000 / by_bs[1],
                "by_batch": by_bs}  # fmt: skip
    from modelfleet.runtime.config import ModelConfig

    plan = PLANS[model]
    config = ModelConfig.model_validate(model_config(model))
    requests = make_traffic(model, count).ceiling_inputs()["requests"]
    ceiling = load_ceiling(config, store, requests=requests, warmup=plan.warmup)
    by_bs = ceiling.sweep(batch_sizes(model), rounds=plan.sweep_rounds)
    exact = Ceiling(config, ceiling.modules, ceiling.cpu, requests=requests, pad=False,
                    warmup=plan.warmup)  # fmt: skip
    pairs: dict[str, list[float]] = {"padded": [], "exact": []}
    for _ in range(3):  # alternating: the host's speed drifts
        pairs["padded"].append(ceiling.request_ms(ceiling.measure(1, 0.2)))
        pairs["exact"].append(exact.request_ms(exact.measure(1, 0.2)))
    padded_ms, exact_ms = (statistics.median(pairs[k]) for k in ("padded", "exact"))
    return {
        "ceiling_rows_per_s": max(by_bs.values()), "forward_ms": exact_ms,
        "forward_padded_ms": padded_ms, "by_batch": by_bs, "best_batch": ceiling.best_batch,
        "tokens_computed_per_real": padding_overhead(config, requests),
        "lengths": [int(r[0].shape[1]) for r in requests],
    }  # fmt: skip


def summarize(points: list[Point], forward_ms: float, ceiling: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for slo in SLOS_MS:
        ok = [p.throughput for p in points if p.p99 <= slo and p.requests]
        out[f"thr_p99_{slo}ms"] = max(ok) if ok else 0.0
        out[f"ratio_p99_{slo}ms"] = out[f"thr_p99_{slo}ms"] / ceiling
    c1 = [p for p in points if p.concurrency == 1]
    out["overhead_floor_ms"] = (c1[0].p50 - forward_ms) if c1 else float("nan")
    out["errors"] = sum(p.errors for p in points)
    return out


def best_settings(model: str, peer: str, profile: str) -> tuple[float, dict[str, Any]]:
    """The max wait (ms) and extra settings of ``peer`` serving ``model`` in ``profile``."""
    if profile != "best":
        return 2.0, {}
    best = BEST_FOR.get(model, {}).get(peer, BEST.get(peer, {}))
    return best.get("max_wait_ms", 2.0), best.get("extra", {})


def parse_models(text: str) -> list[str]:
    names = [m for m in text.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    return names


# -- the run ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--models", default="cnn,bert",
                        help=f"models to compare on, in turn (of {', '.join(MODELS)})")  # fmt: skip
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--profiles", default="identical,best")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,4,8,16,32,64")
    parser.add_argument("--port", type=int, default=19000)
    parser.add_argument("--sentences", type=int, default=None, metavar="N",
                        help="sentences in BERT's request list (default: make bench's, "
                        f"{PLANS['bert'].inputs})")  # fmt: skip
    parser.add_argument("--no-probe", action="store_true",
                        help="skip running each server with variable lengths batched as "
                        "fixed shapes (what happens out of the box)")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = parse_models(args.models)
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = [p for p in args.peers.split(",") if p]
    venvs = peer_venvs(wanted)
    unavailable: dict[str, str] = {}
    for peer in wanted:
        if peer not in venvs:
            unavailable[peer] = "its environment could not be installed (see above)"
        elif peer == "pytriton":
            # Tried on 2026-11-24: nvidia-pytriton 0.7.0 installs and its bundled
            # tritonserver 2.51 starts in CPU mode, but the Python-backend model fails to
            # initialise under Python 3.11 ("'_thread.RLock' object has no attribute
            # '_recursion_count'"), so no model can be served.
            unavailable[peer] = (
                "nvidia-pytriton 0.7.0: tritonserver starts on CPU, but its Python-backend "
                "stub fails under Python 3.11 (RLock._recursion_count); no model loads"
            )
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "versions": peer_versions(), "duration_s": args.duration,
        "concurrency": levels, "models": {},
    }  # fmt: skip
    port = args.port
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        store = tmp / "models"
        write_examples(store)
        if any(m in SEQUENCES for m in models):
            write_zoo(store)
        for model in models:
            entry: dict[str, Any] = {"runs": {}, "unavailable": dict(unavailable)}
            results["models"][model] = entry
            pin(0)
            torch.set_num_threads(1)
            entry.update(measure_ceiling(model, store, args.sentences))
            ceiling, forward_ms = entry["ceiling_rows_per_s"], entry["forward_ms"]
            print(f"raw forward of {model}: ceiling {ceiling:,.0f} rows/s, one request alone "
                  f"{forward_ms:.3f} ms", flush=True)  # fmt: skip
            pin(1)
            load = workload(model, store, args.sentences)
            live = [p for p in wanted if p in venvs and p not in unavailable]
            if model in SEQUENCES:
                entry["handling"] = {p: HANDLING[p] for p in live}
                if not args.no_probe:
                    entry["as_is"] = {}
                    for peer in live:
                        port += 10
                        entry["as_is"][peer] = probe(peer, venvs[peer], load, store, port, tmp)
            for profile in [p for p in args.profiles.split(",") if p]:
                for peer in live:
                    if peer in entry["unavailable"]:
                        continue
                    wait, extra = best_settings(model, peer, profile)
                    reps = []
                    for rep in range(args.reps):
                        port += 10
                        try:
                            points, verdict = measure(peer, venvs[peer], load, store, port, wait,
                                                      extra, tmp, levels, args.duration)  # fmt: skip
                        except RuntimeError as exc:
                            entry["unavailable"][peer] = f"{profile}: {exc}"
                            print(f"{model} {peer}: {exc}", flush=True)
                            break
                        summary = summarize(points, forward_ms, ceiling)
                        summary["checked"] = verdict.sent
                        summary["points"] = [{"c": p.concurrency, "thr": p.throughput,
                                              "p50": p.p50, "p99": p.p99, "errors": p.errors}
                                             for p in points]  # fmt: skip
                        reps.append(summary)
                        print(f"{model} {profile} {peer} rep {rep + 1}: "
                              + ", ".join(f"p99<={s}ms {summary[f'thr_p99_{s}ms']:,.0f}/s"
                                          for s in SLOS_MS)
                              + f", floor {summary['overhead_floor_ms']:+.2f} ms "
                              f"({verdict.sent} answers checked)", flush=True)  # fmt: skip
                    if reps:
                        entry["runs"][f"{profile}/{peer}"] = reps
        if "modelfleet" in wanted and "cnn" in models:
            results["priorities"] = priority_case(args, store, tmp, venvs["modelfleet"], port + 100)
    results["load_average_after"] = os.getloadavg()
    report(results, out)
    return 0


def measure(peer: str, venv: Path, load: Workload, store: Path, port: int, wait_ms: float,
            extra: dict[str, Any], tmp: Path, levels: Sequence[int],
            duration: float) -> tuple[list[Point], Verdict]:  # fmt: skip
    """One repetition: ``peer`` started, every answer checked (``verify``; any
    wrong or refused one raises), then the closed loop at each of ``levels``."""
    url = f"http://127.0.0.1:{port}{load.url_path}"
    began = time.time()
    proc = start(peer, venv, load.model, store, port, wait_ms, extra, tmp)
    try:
        wait_ready(url, load, proc)
        verdict = asyncio.run(verify(url, load))
        if verdict.ok != verdict.sent:
            verdict.server_error = last_error(*server_logs(tmp, peer, port, began))
            raise RuntimeError(f"wrong or refused answers: {verdict.summary()}")
        points = [asyncio.run(closed_loop(url, load.bodies, load.headers, c, duration))
                  for c in levels]  # fmt: skip
    finally:
        stop(proc)
    return points, verdict


def probe(peer: str, venv: Path, load: Workload, store: Path, port: int,
          tmp: Path) -> dict[str, Any]:  # fmt: skip
    """``peer`` batching the variable-length requests as it batches fixed shapes
    (``AS_IS``, identical settings): every request sent with 16 in flight, the
    answers counted right, wrong or refused, and the server's last error."""
    url = f"http://127.0.0.1:{port}{load.url_path}"
    began = time.time()
    proc = start(peer, venv, load.model, store, port, 2.0, {}, tmp, lengths="as-is")
    try:
        wait_ready(url, load, proc)
        verdict = asyncio.run(verify(url, load))
    except RuntimeError as exc:
        verdict = Verdict(failure=str(exc))
    finally:
        stop(proc)
    verdict.server_error = last_error(*server_logs(tmp, peer, port, began))
    print(f"{load.model} {peer} as-is ({AS_IS[peer]}): {verdict.summary()}", flush=True)
    return {"what": AS_IS[peer], **asdict(verdict), "summary": verdict.summary()}


def priority_case(
    args: argparse.Namespace, store: Path, tmp: Path, venv: Path, port: int
) -> dict[str, Any]:
    """Two models at 1.5x capacity, 10% of requests high priority (Triton's priority 1)."""
    proc_cfg = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "model_store": str(store),
            "torch_threads": 1,
        },
        "models": [
            {**model_config("cnn"), "priority": 100, "queue": {"max_size": 64, "timeout_ms": 200}},
            {**model_config("mlp"), "priority": 0, "queue": {"max_size": 64, "timeout_ms": 200}},
        ],
    }
    path = tmp / "priorities.yaml"
    path.write_text(yaml.safe_dump(proc_cfg))
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    proc = subprocess.Popen(["taskset", "-c", "0", str(venv / "bin/python"), "-m", "modelfleet",
                             "--log-level", "WARNING", "serve", "--config", str(path)],
                            env=env, start_new_session=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/v2/models/cnn/infer"
        body, headers, _ = request_body("cnn", "json", np.random.default_rng(1))
        for _ in range(120):
            try:
                with urllib.request.urlopen(urllib.request.Request(base, data=body), timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        capacity = asyncio.run(closed_loop(base, body, headers, 32, args.duration)).throughput
        high = json.loads(body)
        high["parameters"] = {"priority": 1}
        # The priority travels in the body (Triton's parameter) and, as the gateway
        # sends it, in a header that lets the runtime shed before reading the body.
        classes = {
            "high": (json.dumps(high).encode(), {**headers, "X-ModelFleet-Priority": "1"}, 0.1),
            "low": (body, {**headers, "X-ModelFleet-Priority": "0"}, 0.9),
        }
        result = asyncio.run(open_loop(base, classes, 1.5 * capacity, args.duration * 2))
    finally:
        stop(proc)
    summary: dict[str, Any] = {"capacity_req_s": capacity, "offered_req_s": 1.5 * capacity}
    for name, point in result.items():
        total = point.requests + point.errors
        summary[name] = {"p99_ms": point.p99, "p50_ms": point.p50, "served": point.requests,
                         "shed_rate": point.errors / total if total else 0.0}  # fmt: skip
    print(f"priorities at 1.5x capacity ({capacity:,.0f} req/s): "
          f"high p99 {summary['high']['p99_ms']:.1f} ms, shed {summary['high']['shed_rate']:.1%}; "
          f"low p99 {summary['low']['p99_ms']:.1f} ms, shed {summary['low']['shed_rate']:.1%}")  # fmt: skip
    return summary


def model_table(entry: dict[str, Any]) -> str:
    """One model's runs: median ± half the range over the reps, of the ceiling."""
    rows = []
    for key, reps in entry["runs"].items():
        row: list[object] = [key]
        for slo in SLOS_MS:
            vals = [r[f"thr_p99_{slo}ms"] for r in reps]
            ratio = statistics.median(r[f"ratio_p99_{slo}ms"] for r in reps)
            spread = (max(vals) - min(vals)) / 2
            row.append(f"{statistics.median(vals):,.0f} ±{spread:,.0f} ({ratio:.0%})")
        floors = [r["overhead_floor_ms"] for r in reps]
        row.append(f"{statistics.median(floors):+.2f} ±{(max(floors) - min(floors)) / 2:.2f}")
        row.append(str(len(reps)))
        rows.append(row)
    header = ["profile/server", *(f"req/s p99<={s}ms (of ceiling)" for s in SLOS_MS),
              "floor ms (c=1)", "reps"]  # fmt: skip
    return table(rows, header)


def report(results: dict[str, Any], out: Path) -> None:
    texts = []
    for model, entry in results["models"].items():
        lines = [f"## {model}", ""]
        padded = ", padded by bucket" if model in SEQUENCES else ""
        lines.append(f"ceiling (raw forward, 1 thread{padded}): "
                     f"{entry['ceiling_rows_per_s']:,.0f} rows/s; one request alone: "
                     f"{entry['forward_ms']:.3f} ms")  # fmt: skip
        if model in SEQUENCES:
            lines.append(f"(one request alone padded to its bucket: "
                         f"{entry['forward_padded_ms']:.3f} ms; bucket padding computes "
                         f"{entry['tokens_computed_per_real']:.2f} positions per real token)")  # fmt: skip
        lines += ["", model_table(entry), ""]
        for peer, why in entry["unavailable"].items():
            lines.append(f"{peer}: {why}")
        if "handling" in entry:
            lines.append("\nvariable lengths, as the bench serves them:")
            lines += [f"  {peer}: {what}" for peer, what in entry["handling"].items()]
        if "as_is" in entry:
            lines.append("variable lengths batched as fixed shapes (out of the box):")
            lines += [
                f"  {peer}: {p['what']}: {p['summary']}" for peer, p in entry["as_is"].items()
            ]
        texts.append("\n".join(lines))
        plot(model, entry, out / f"peers-{model}.png")
    text = "\n\n".join(texts)
    load = results["load_average_before"][0], results["load_average_after"][0]
    text += f"\n\nload average (1 min) before {load[0]:.2f}, after {load[1]:.2f}\n"
    print()
    print(text)
    (out / "peers.json").write_text(json.dumps(results, indent=2))
    (out / "peers.md").write_text(text)
    pngs = ", ".join(str(out / f"peers-{m}.png") for m in results["models"])
    print(f"wrote {out / 'peers.json'}, {out / 'peers.md'} and {pngs}")


def plot(model: str, entry: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    keys = list(entry["runs"])
    width = 0.8 / max(1, len(SLOS_MS))
    for i, slo in enumerate(SLOS_MS):
        values = [statistics.median(r[f"ratio_p99_{slo}ms"] for r in entry["runs"][k])
                  for k in keys]  # fmt: skip
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=f"p99 <= {slo} ms")
    ax.set_xticks([j + width for j in range(len(keys))], keys, rotation=20, ha="right")
    ax.set_ylabel("throughput / raw forward ceiling")
    ax.set_title(f"{model}: served throughput at a latency SLO (median of reps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
