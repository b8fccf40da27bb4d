"""``make gpu-check`` where there is no GPU: it refuses, non-zero, and says what is
missing; the GPU tests stay out of every other run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def test_gpu_check_without_cuda_exits_non_zero_naming_what_is_missing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"],
        cwd=ROOT, env=NO_GPU, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpu-check: cannot run: " in proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr or "without CUDA" in proc.stderr


def test_the_gpu_tests_are_not_collected_by_a_normal_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gpu", "--collect-only", "-q"],
        cwd=ROOT, env={k: v for k, v in NO_GPU.items() if k != "MODELFLEET_GPU_CHECK"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "no tests collected" in proc.stdout + proc.stderr, proc.stdout


def test_the_gpu_tests_without_cuda_stop_at_once_instead_of_skipping() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q"],
        cwd=ROOT, env={**NO_GPU, "MODELFLEET_GPU_CHECK": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "the GPU tests need a CUDA device" in proc.stdout + proc.stderr
    assert "skipped" not in proc.stdout
