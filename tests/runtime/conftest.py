"""Fixtures for runtime tests: example models on disk and in-process servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from modelfleet.runtime.config import parse_document
from modelfleet.runtime.runtime import Runtime
from modelfleet.runtime.server import build_data_app
from tests.support.servers import RuntimeProcess

MLP_INPUTS = [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
MLP_OUTPUTS = [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]


def mlp_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "mlp",
        "version": "1",
        "source": "mlp.safetensors",
        "architecture": "modelfleet.runtime.examples:mlp",
        "inputs": MLP_INPUTS,
        "outputs": MLP_OUTPUTS,
        "batching": {"max_batch_size": 16, "max_queue_delay_ms": 2},
    }
    config.update(overrides)
    return config


def tiny_model(name: str, factory: str, datatype: str = "FP32", **overrides: Any) -> dict[str, Any]:
    """A parameter-free test architecture with one input ``x`` and output ``y``."""
    config: dict[str, Any] = {
        "name": name,
        "source": "empty.safetensors",
        "architecture": f"tests.runtime.models:{factory}",
        "inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": datatype, "shape": [-1, 4]}],
    }
    config.update(overrides)
    return config


@pytest.fixture
def serve(tmp_path: Path, model_store: Path) -> Iterator[Any]:
    """Starts runtimes as real processes (``serve(models, **server)``); stops them after."""
    servers: list[RuntimeProcess] = []

    def start(models: list[dict[str, Any]], **server: Any) -> RuntimeProcess:
        servers.append(RuntimeProcess(tmp_path, models, model_store, **server))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


Started = tuple[TestClient[Any, Any], Runtime]
StartRuntime = Callable[..., Awaitable[Started]]


@pytest.fixture
async def start_runtime(model_store: Path) -> AsyncIterator[StartRuntime]:
    """Starts a runtime in-process on a loopback port; stops it after the test."""
    started: list[Started] = []

    async def start(models: list[dict[str, Any]], **server: Any) -> Started:
        document = parse_document(
            {"server": {"model_store": str(model_store), **server}, "models": models}
        )
        runtime = Runtime(document)
        await runtime.start()
        client: TestClient[Any, Any] = TestClient(TestServer(build_data_app(runtime)))
        await client.start_server()
        started.append((client, runtime))
        return client, runtime

    yield start
    for client, runtime in started:
        await client.close()
        await runtime.close()


def infer_body(
    name: str, values: Any, shape: list[int], datatype: str = "FP32", **extra: Any
) -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": values}],
        **extra,
    }


def batch_stats(runtime: Any, model: str) -> tuple[float, float]:
    """(number of batches, rows) from the batch-size histogram."""
    values = {
        sample.name: sample.value
        for metric in runtime.metrics.registry.collect()
        for sample in metric.samples
        if sample.labels.get("model") == model and sample.name.startswith("modelfleet_batch_size")
    }
    return values.get("modelfleet_batch_size_count", 0.0), values.get(
        "modelfleet_batch_size_sum", 0.0
    )
