"""One version for the project: pyproject.toml's, read through modelfleet.version by
every place that reports or tags it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from modelfleet.operator.settings import DEFAULT_RUNTIME_IMAGE
from modelfleet.version import VERSION

ROOT = Path(__file__).resolve().parents[1]


def test_every_component_reports_the_version_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert declared == VERSION
    assert f"modelfleet/runtime:{declared}" == DEFAULT_RUNTIME_IMAGE
    sources = [ROOT / "runtime/modelfleet/runtime/runtime.py",
               ROOT / "gateway/modelfleet/gateway/proxy.py"]  # fmt: skip
    for source in sources:  # the servers' metadata endpoints: no second literal
        assert f'"{declared}"' not in source.read_text(), source
