"""The operator's and the gateway's tests need no torch: collecting them (which
imports every test module and what it imports) leaves torch and numpy unloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys, pytest
code = pytest.main(["-q", "--co", "-p", "no:randomly", "tests/operator", "tests/gateway"])
heavy = [m for m in ("torch", "numpy", "safetensors") if m in sys.modules]
print("HEAVY", heavy)
sys.exit(code or (3 if heavy else 0))
"""


def test_operator_and_gateway_tests_import_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HEAVY []" in done.stdout
