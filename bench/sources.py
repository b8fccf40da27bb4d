"""The folders a process started by a benchmark needs on its path, from one place
(pyproject.toml): the repository root (``bench``, ``tests``) and the folders that
hold the packages (``[tool.setuptools.package-dir]``). Children that run the clone's
own interpreter find the project installed (editable) anyway; the peers' separate
environments do not have it and need these."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_folders() -> list[Path]:
    """The repository root and each package folder's parent (runtime, gateway, operator)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    folders = [ROOT]
    for name, path in mapping.items():
        parent = (ROOT / path).parents[len(name.split(".")) - 1]
        if parent not in folders:
            folders.append(parent)
    return folders


def pythonpath() -> str:
    """``PYTHONPATH`` for a child process that runs ``python -m modelfleet ...``."""
    return os.pathsep.join(str(p) for p in source_folders())
