"""``make gpu-check``: the runtime on a CUDA device, in a few minutes.

1. The runtime's GPU tests (``tests/gpu``, marker ``gpu``): footprints measured
   at warm-up, memory returned after unload (and a leak flagged), a real CUDA
   out-of-memory error contained to its batch, with both executors.
2. A short bench on the GPU: the raw forward pass of each model on the device
   (inputs copied in and outputs copied back, as the runtime does: the
   "ceiling"), then the runtime serving it (``device: cuda``) under a closed
   loop at concurrency 1 and at ``--concurrency``; the served throughput as a
   ratio of the ceiling, and the latency the runtime adds at concurrency 1
   (served p50 less the raw pass of one row).
3. A summary, printed (and written as JSON with ``--out``).

Without a CUDA device it exits with status 2 and says what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = 2
"""Exit status when there is no CUDA device to check."""


def missing() -> str | None:
    """What a GPU check lacks on this machine, or None when a CUDA device is usable."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = "" if visible is None else f"; CUDA_VISIBLE_DEVICES={visible!r}"
        return (
            f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}{where}); is there a GPU and its driver?"
        )
    return None


def run_tests(timeout_s: float) -> dict[str, Any]:
    """``pytest tests/gpu -m gpu`` with the GPU tests enabled; its outcome."""
    env = {**os.environ, "MODELFLEET_GPU_CHECK": "1"}
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-rA", "-s",
           "-p", "no:cacheprovider"]  # fmt: skip
    print("==> " + " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)  # fmt: skip
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"{exc.stdout or ''}\ntimed out after {timeout_s:.0f} s", 124
    print(output, flush=True)
    lines = [line for line in output.splitlines() if line.strip()]
    return {
        "returncode": code,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.perf_counter() - started, 1),
    }


def raw_forward(
    store: Path, name: str, seconds: float, max_batch: int, device_name: str = "cuda"
) -> dict[str, float]:
    """The model's bare forward pass on the GPU: rows/s at ``max_batch`` rows, and the
    median time of a one-row pass (ms), inputs in and outputs out as served."""
    import torch

    from bench.runtime_bench import make_traffic, model_config
    from modelfleet.runtime.config import ModelConfig
    from modelfleet.runtime.forward import forward
    from modelfleet.runtime.loader import load_module

    device = torch.device(device_name)
    config = ModelConfig.model_validate(model_config(name))
    module = load_module(config, store, device)
    images = make_traffic(name).images
    assert images is not None
    batch = [images[:max_batch].numpy()]
    one = [images[:1].numpy()]
    for _ in range(5):
        forward(module, batch, config.outputs, device)
    rows, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        forward(module, batch, config.outputs, device)
        rows += max_batch
    rate = rows / (time.perf_counter() - began)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        forward(module, one, config.outputs, device)
        times.append((time.perf_counter() - t0) * 1000)
    del module
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"rows_per_s": rate, "one_row_ms": statistics.median(times)}


def served(
    store: Path,
    tmp: Path,
    name: str,
    levels: list[int],
    seconds: float,
    port: int,
    device_name: str = "cuda",
) -> dict[int, dict[str, float]]:
    """The runtime serving ``name`` on the GPU: rows/s and latency (ms) per concurrency."""
    import yaml

    from bench.loadgen import closed_loop
    from bench.runtime_bench import make_traffic, model_config, wait_ready

    config = {
        "server": {"host": "127.0.0.1", "port": port, "model_store": str(store),
                   "device": device_name, "memory_budget_mb": 65536},
        "models": [model_config(name)],
    }  # fmt: skip
    path = tmp / f"gpu-check-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    cmd = [sys.executable, "-m", "modelfleet", "--log-level", "WARNING", "serve",
           "--config", str(path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    out: dict[int, dict[str, float]] = {}
    try:
        wait_ready(base, proc, timeout=180)
        bodies, headers = make_traffic(name).bodies("binary")
        url = f"{base}/v2/models/{name}/infer"
        for level in levels:
            point = asyncio.run(closed_loop(url, bodies, headers, level, seconds))
            out[level] = {"rows_per_s": point.throughput, "p50_ms": point.p50,
                          "p99_ms": point.p99, "errors": point.errors}  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def bench(
    models: list[str], levels: list[int], seconds: float, port: int, device: str = "cuda"
) -> dict[str, Any]:
    import torch

    from modelfleet.runtime.examples import write_examples
    from modelfleet.runtime.zoo import ZOO, write_zoo

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        write_examples(store)
        if any(name in ZOO for name in models):
            write_zoo(store)
        for name in models:
            from bench.runtime_bench import model_config

            max_batch = int(model_config(name).get("batching", {}).get("max_batch_size", 16))
            where = torch.cuda.get_device_name(0) if device == "cuda" else device
            print(f"==> bench {name} on {where}", flush=True)
            raw = raw_forward(store, name, seconds, max_batch, device)
            print(f"  raw forward: {raw['rows_per_s']:,.0f} rows/s at batch {max_batch}, "
                  f"one row {raw['one_row_ms']:.3f} ms", flush=True)  # fmt: skip
            points = served(store, Path(tmp), name, levels, seconds, port, device)
            for level, p in points.items():
                print(f"  served c={level}: {p['rows_per_s']:,.0f} rows/s, p50 {p['p50_ms']:.2f} "
                      f"ms, p99 {p['p99_ms']:.2f} ms, errors {p['errors']}", flush=True)  # fmt: skip
            best = max(p["rows_per_s"] for p in points.values())
            one = points.get(1)
            results[name] = {
                "raw": raw,
                "served": points,
                "throughput_ratio": best / raw["rows_per_s"] if raw["rows_per_s"] else None,
                "added_latency_ms_at_c1": one["p50_ms"] - raw["one_row_ms"] if one else None,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", default="cnn,resnet",
        help="models of bench/runtime_bench.py to bench (mlp, cnn, resnet; not bert)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured point")
    parser.add_argument("--concurrency", type=int, default=32, help="the loaded level")
    parser.add_argument("--port", type=int, default=18380)
    parser.add_argument("--tests-timeout", type=float, default=300.0)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary as JSON")
    parser.add_argument(
        "--dry-run-on", metavar="DEVICE", default=None,
        help="run only the bench, on another device (e.g. cpu): checks the script "
        "itself where there is no GPU; its figures say nothing about a GPU",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.dry_run_on:
        models = [m for m in args.models.split(",") if m]
        results = bench(models, [1, args.concurrency], args.duration, args.port, args.dry_run_on)
        print(json.dumps(results, indent=2, default=str))
        return 0
    lacking = missing()
    if lacking is not None:
        print(f"gpu-check: cannot run: {lacking}", file=sys.stderr)
        return NO_CUDA
    import torch

    devices = [
        f"{i}: {torch.cuda.get_device_name(i)} "
        f"({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
        for i in range(torch.cuda.device_count())
    ]
    print(f"gpu-check: torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"devices {'; '.join(devices)}", flush=True)  # fmt: skip
    summary: dict[str, Any] = {"devices": devices, "torch": torch.__version__,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}  # fmt: skip
    if not args.skip_tests:
        summary["tests"] = run_tests(args.tests_timeout)
    if not args.skip_bench:
        models = [m for m in args.models.split(",") if m]
        summary["bench"] = bench(models, [1, args.concurrency], args.duration, args.port)
    print("\n==> gpu-check summary")
    print(f"devices: {'; '.join(devices)}")
    if "tests" in summary:
        t = summary["tests"]
        print(f"GPU tests: {'passed' if t['returncode'] == 0 else 'FAILED'} ({t['summary']})")
    for name, r in summary.get("bench", {}).items():
        ratio = r["throughput_ratio"]
        added = r["added_latency_ms_at_c1"]
        print(f"{name}: served/raw throughput {ratio:.2f}, added latency at c=1 {added:.2f} ms "
              f"(raw one-row pass {r['raw']['one_row_ms']:.3f} ms)")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=str))
    failed = "tests" in summary and summary["tests"]["returncode"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
