"""The runtime's GPU tests: run by ``make gpu-check`` (``bench/gpu_check.py``) only.

They are collected only when ``MODELFLEET_GPU_CHECK=1`` (which ``make gpu-check``
sets), so ``make test`` and ``make unit`` never see them: they are not skipped,
they are not part of those runs. With the variable set and no CUDA device, the
run stops at once and says so instead of skipping anything.
"""

from __future__ import annotations

import os

import pytest

from tests.runtime.conftest import start_runtime  # noqa: F401  (the fixture, shared)

ENABLED = os.environ.get("MODELFLEET_GPU_CHECK") == "1"

collect_ignore_glob = [] if ENABLED else ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    mine = [i for i in items if str(i.path).startswith(here)]
    for item in mine:
        item.add_marker(pytest.mark.gpu)
    if mine:
        import torch

        if not torch.cuda.is_available():
            pytest.exit(
                "the GPU tests need a CUDA device: torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})",
                returncode=3,
            )
