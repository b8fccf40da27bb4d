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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.loadgen import Point, closed_loop, open_loop, table
from bench.runtime_bench import model_config, pin, raw_forward, request_body
from modelfleet.runtime.examples import write_examples

ROOT = Path(__file__).resolve().parents[1]
SLOS_MS = (20, 50, 100)
PEERS = ("modelfleet", "litserve", "mlserver", "ray", "pytriton")
SCRIPTS = {
    "litserve": "bench.peers.servers.litserve_server",
    "mlserver": "bench.peers.servers.mlserver_server",
    "ray": "bench.peers.servers.ray_server",
}
# Each runtime at its best: what its documentation recommends for small CPU models.
BEST = {
    "modelfleet": {"max_wait_ms": 2.0, "extra": {"optimize": "trace"}},
    "litserve": {"max_wait_ms": 1.0},
    "mlserver": {"max_wait_ms": 1.0},
    "ray": {"max_wait_ms": 1.0},
}


def peer_venvs() -> dict[str, Path]:
    result = subprocess.run(
        ["bash", str(ROOT / "bench/peers/venvs.sh")], capture_output=True, text=True
    )
    sys.stderr.write(result.stderr)
    venvs = {"modelfleet": Path(sys.executable).parents[1]}
    for line in result.stdout.splitlines():
        name, _, path = line.partition(" ")
        venvs[name] = Path(path)
    return venvs


def start(peer: str, venv: Path, model: str, store: Path, port: int, wait_ms: float,
          extra: dict[str, Any], tmp: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtime")]),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
    python = str(venv / "bin/python")
    if peer == "modelfleet":
        config = model_config(model)
        config["batching"] = {"max_batch_size": 16, "max_queue_delay_ms": wait_ms}
        config["optimize"] = "none"
        config.update(extra)
        doc = {"server": {"host": "127.0.0.1", "port": port, "model_store": str(store),
                          "torch_threads": 1}, "models": [config]}  # fmt: skip
        path = tmp / f"modelfleet-{port}.yaml"
        path.write_text(yaml.safe_dump(doc))
        cmd = [python, "-m", "modelfleet", "--log-level", "WARNING", "serve", "--config", str(path)]
    else:
        cmd = [python, "-m", SCRIPTS[peer], "--model", model, "--model-dir", str(store),
               "--port", str(port), "--max-batch", "16", "--max-wait-ms", str(wait_ms)]  # fmt: skip
    log = open(tmp / f"{peer}-{port}.log", "w")  # noqa: SIM115
    return subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def wait_correct(url: str, body: bytes, headers: dict[str, str], reference: np.ndarray,
                 proc: subprocess.Popen[bytes], timeout: float = 180) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(req, timeout=5) as resp:
                answer = json.loads(resp.read())
        except (OSError, urllib.error.HTTPError, json.JSONDecodeError):
            time.sleep(0.5)
            continue
        data = answer["outputs"][0]["data"]
        got = np.array(data, dtype=np.float32).reshape(reference.shape)
        if not np.allclose(got, reference, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"wrong answer: {got.ravel()[:4]} vs {reference.ravel()[:4]}")
        return
    raise RuntimeError("not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if sys.platform.startswith("linux"):
        subprocess.run(["pkill", "-9", "-f", "ray::|raylet|gcs_server"], check=False)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench-results")
    # one FP32 input of fixed shape: what the peers' servers here accept
    parser.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--profiles", default="identical,best")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,4,8,16,32,64")
    parser.add_argument("--port", type=int, default=19000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    venvs = peer_venvs()
    wanted = [p for p in args.peers.split(",") if p]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "model": args.model,
                               "cpus": os.cpu_count(), "torch": torch.__version__,
                               "runs": {}, "unavailable": {}}  # fmt: skip
    for peer in wanted:
        if peer not in venvs:
            results["unavailable"][peer] = "its environment could not be installed (see above)"
        elif peer == "pytriton":
            # Tried on 2026-11-24: nvidia-pytriton 0.7.0 installs and its bundled
            # tritonserver 2.51 starts in CPU mode, but the Python-backend model fails to
            # initialise under Python 3.11 ("'_thread.RLock' object has no attribute
            # '_recursion_count'"), so no model can be served.
            results["unavailable"][peer] = (
                "nvidia-pytriton 0.7.0: tritonserver starts on CPU, but its Python-backend "
                "stub fails under Python 3.11 (RLock._recursion_count); no model loads"
            )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        store = tmp / "models"
        write_examples(store)
        pin(0)
        torch.set_num_threads(1)
        by_bs = raw_forward(store, args.model)
        ceiling, forward_ms = max(by_bs.values()), 1000 / by_bs[1]
        results.update(ceiling_rows_per_s=ceiling, forward_ms_batch1=forward_ms)
        print(
            f"raw forward of {args.model}: ceiling {ceiling:,.0f} rows/s, batch 1 {forward_ms:.3f} ms"
        )
        pin(1)
        body, headers, x = request_body(args.model, "json", np.random.default_rng(0))
        from modelfleet.runtime.config import ModelConfig
        from modelfleet.runtime.loader import load_module

        config = ModelConfig.model_validate({**model_config(args.model), "optimize": "none"})
        reference = load_module(config, store, torch.device("cpu"))(torch.from_numpy(x))
        reference = reference.detach().numpy()
        port = args.port
        for profile in [p for p in args.profiles.split(",") if p]:
            for peer in wanted:
                if peer not in venvs or peer in results["unavailable"]:
                    continue
                best = BEST.get(peer, {})
                wait = best.get("max_wait_ms", 2.0) if profile == "best" else 2.0
                extra = best.get("extra", {}) if profile == "best" else {}
                reps = []
                for rep in range(args.reps):
                    port += 10
                    url = f"http://127.0.0.1:{port}/v2/models/{args.model}/infer"
                    proc = start(peer, venvs[peer], args.model, store, port, wait, extra, tmp)
                    try:
                        wait_correct(url, body, headers, reference, proc)
                        points = [asyncio.run(closed_loop(url, body, headers, c, args.duration))
                                  for c in levels]  # fmt: skip
                    except RuntimeError as exc:
                        results["unavailable"][peer] = f"{profile}: {exc}"
                        print(f"{peer}: {exc}", flush=True)
                        break
                    finally:
                        stop(proc)
                    summary = summarize(points, forward_ms, ceiling)
                    summary["points"] = [{"c": p.concurrency, "thr": p.throughput, "p50": p.p50,
                                          "p99": p.p99, "errors": p.errors} for p in points]  # fmt: skip
                    reps.append(summary)
                    print(f"{profile} {peer} rep {rep + 1}: "
                          + ", ".join(f"p99<={s}ms {summary[f'thr_p99_{s}ms']:,.0f}/s" for s in SLOS_MS)
                          + f", floor {summary['overhead_floor_ms']:+.2f} ms", flush=True)  # fmt: skip
                if reps:
                    results["runs"][f"{profile}/{peer}"] = reps
        if "modelfleet" in wanted:
            results["priorities"] = priority_case(args, store, tmp, venvs["modelfleet"], port + 100)
    report(results, out)
    return 0


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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtime")])}
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
    summary = {"capacity_req_s": capacity, "offered_req_s": 1.5 * capacity}
    for name, point in result.items():
        total = point.requests + point.errors
        summary[name] = {"p99_ms": point.p99, "p50_ms": point.p50, "served": point.requests,
                         "shed_rate": point.errors / total if total else 0.0}  # fmt: skip
    print(f"priorities at 1.5x capacity ({capacity:,.0f} req/s): "
          f"high p99 {summary['high']['p99_ms']:.1f} ms, shed {summary['high']['shed_rate']:.1%}; "
          f"low p99 {summary['low']['p99_ms']:.1f} ms, shed {summary['low']['shed_rate']:.1%}")  # fmt: skip
    return summary


def report(results: dict[str, Any], out: Path) -> None:
    rows = []
    for key, reps in results["runs"].items():
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
    text = table(rows, header)
    print()
    print(
        f"ceiling (raw forward, 1 thread): {results['ceiling_rows_per_s']:,.0f} rows/s; "
        f"forward at batch 1: {results['forward_ms_batch1']:.3f} ms"
    )
    print(text)
    for peer, why in results["unavailable"].items():
        print(f"{peer}: {why}")
    (out / "peers.json").write_text(json.dumps(results, indent=2))
    (out / "peers.md").write_text(text + "\n")
    plot(results, out / "peers.png")
    print(f"\nwrote {out / 'peers.json'}, {out / 'peers.md'} and {out / 'peers.png'}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    keys = list(results["runs"])
    width = 0.8 / max(1, len(SLOS_MS))
    for i, slo in enumerate(SLOS_MS):
        values = [
            statistics.median(r[f"ratio_p99_{slo}ms"] for r in results["runs"][k]) for k in keys
        ]
        ax.bar([j + i * width for j in range(len(keys))], values, width, label=f"p99 <= {slo} ms")
    ax.set_xticks([j + width for j in range(len(keys))], keys, rotation=20, ha="right")
    ax.set_ylabel("throughput / raw forward ceiling")
    ax.set_title(f"{results['model']}: served throughput at a latency SLO (median of reps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
