"""The project's version, from one place: the installed distribution's metadata
(the images install the package), else ``pyproject.toml`` beside the sources (a
checkout run from its folders, as ``make run`` and the tests do)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _version() -> str:
    try:
        return metadata.version("modelfleet")
    except metadata.PackageNotFoundError:
        with PYPROJECT.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])


VERSION = _version()
"""What the servers' metadata endpoints report and the default image tag carries."""
