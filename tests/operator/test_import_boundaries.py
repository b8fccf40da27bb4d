"""The operator's and the gateway's tests need no torch: collecting them (which
imports every test module and what it imports) leaves torch unloaded, and the
operator's leave numpy unloaded too (the gateway's gRPC tests drive it with
tritonclient, which needs numpy as any client of it does; the gateway itself never
imports numpy: import-linter checks that)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys, pytest
code = pytest.main(["-q", "--co", "-p", "no:randomly", sys.argv[1]])
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print("HEAVY", heavy)
sys.exit(code or (3 if heavy else 0))
"""


@pytest.mark.parametrize(
    ("tests", "forbidden"),
    [("tests/operator", "torch,numpy,safetensors"), ("tests/gateway", "torch,safetensors")],
)
def test_operator_and_gateway_tests_import_no_torch(tests: str, forbidden: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, tests, forbidden], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HEAVY []" in done.stdout
