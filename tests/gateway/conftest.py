"""Gateway tests run real runtime processes and a real gateway process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import GatewayProcess, Process, RuntimeProcess

MLP = {
    "name": "mlp",
    "source": "mlp.safetensors",
    "architecture": "modelfleet.runtime.examples:mlp",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
}
BODY = b'{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]}]}'


def mlp(version: str = "1", **overrides: Any) -> dict[str, Any]:
    return {**MLP, "version": version, **overrides}


@pytest.fixture
def procs(tmp_path: Path, model_store: Path) -> Iterator[Any]:
    """Starts runtimes and gateways; every process is stopped after the test."""
    started: list[Process] = []

    class Starter:
        def runtime(self, models: list[dict[str, Any]], **server: Any) -> RuntimeProcess:
            started.append(RuntimeProcess(tmp_path, models, model_store, **server))
            return started[-1]  # type: ignore[return-value]

        def gateway(self, models: dict[str, Any], **server: Any) -> GatewayProcess:
            started.append(GatewayProcess(tmp_path, models, **server))
            return started[-1]  # type: ignore[return-value]

    yield Starter()
    for proc in started:
        proc.stop()
