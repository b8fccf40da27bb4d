"""The folders a process started by a benchmark needs on its path: the ones pytest
puts there (``[tool.pytest.ini_options] pythonpath`` in pyproject.toml), so that the
benchmarks follow the layout from one place."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_folders() -> list[Path]:
    """The repository's source folders, as pyproject.toml lists them for pytest."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        listed = tomllib.load(f)["tool"]["pytest"]["ini_options"]["pythonpath"]
    return [(ROOT / p).resolve() for p in listed]


def pythonpath() -> str:
    """``PYTHONPATH`` for a child process that runs ``python -m modelfleet ...``."""
    return os.pathsep.join(str(p) for p in source_folders())
