"""The runtime over HTTP on loopback with real torch models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modelfleet.runtime.examples import mlp
from tests.runtime import models as test_models
from tests.runtime.conftest import StartRuntime, batch_stats, infer_body, mlp_config, tiny_model

pytestmark = pytest.mark.integration


def reference_mlp(model_store: Path) -> torch.nn.Module:
    module = mlp()
    module.load_state_dict(load_file(str(model_store / "mlp.safetensors")))
    return module.eval()


async def test_health_metadata_and_ready(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([mlp_config()])
    assert await (await client.get("/v2/health/live")).json() == {"live": True}
    resp = await client.get("/v2/health/ready")
    assert resp.status == 200 and await resp.json() == {"ready": True}
    meta = await (await client.get("/v2")).json()
    assert meta["name"] == "modelfleet" and "model_repository" in meta["extensions"]
    model = await (await client.get("/v2/models/mlp")).json()
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["versions"] == ["1"]
    for path in ("/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
        resp = await client.get(path)
        assert resp.status == 200 and (await resp.json())["ready"] is True


async def test_infer_matches_the_forward_pass_with_and_without_version(
    start_runtime: StartRuntime, model_store: Path
) -> None:
    client, _ = await start_runtime([mlp_config()])
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    expected = reference_mlp(model_store)(torch.from_numpy(x)).detach().numpy()
    for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
        nested = infer_body("input", x.tolist(), [3, 16], id="req-7")
        resp = await client.post(path, json=nested)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["id"] == "req-7" and body["model_version"] == "1"
        out = body["outputs"][0]
        assert out["name"] == "output" and out["shape"] == [3, 4]
        np.testing.assert_allclose(
            np.array(out["data"]).reshape(3, 4), expected, rtol=1e-5, atol=1e-6
        )
        assert resp.headers["X-ModelFleet-Queue-Depth"] == "0"
    flat = infer_body("input", x.reshape(-1).tolist(), [3, 16])
    body = await (await client.post("/v2/models/mlp/infer", json=flat)).json()
    np.testing.assert_allclose(
        np.array(body["outputs"][0]["data"]).reshape(3, 4), expected, rtol=1e-5, atol=1e-6
    )


async def test_batched_outputs_equal_unbatched_forward_under_concurrency(
    start_runtime: StartRuntime, model_store: Path
) -> None:
    client, runtime = await start_runtime(
        [mlp_config(batching={"max_batch_size": 16, "max_queue_delay_ms": 5})]
    )
    reference = reference_mlp(model_store)
    rng = np.random.default_rng(2)
    inputs = [
        rng.standard_normal((int(rng.integers(1, 4)), 16)).astype(np.float32) for _ in range(96)
    ]

    async def call(x: np.ndarray) -> np.ndarray:
        resp = await client.post(
            "/v2/models/mlp/infer", json=infer_body("input", x.tolist(), list(x.shape))
        )
        body = await resp.json()
        assert resp.status == 200, body
        return np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(x.shape[0], 4)

    outputs = await asyncio.gather(*(call(x) for x in inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(
            y, reference(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6
        )
    batches, rows = batch_stats(runtime, "mlp")
    assert rows == sum(x.shape[0] for x in inputs)  # warm-up batches are not counted
    assert batches < len(inputs), "concurrent requests should have been batched together"


async def test_batches_keep_collecting_while_the_device_is_busy(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime(
        [
            tiny_model(
                "rec",
                "recorder",
                batching={"max_batch_size": 64, "max_queue_delay_ms": 0},
                warmup={"enabled": False},
            )
        ]
    )
    test_models.FORWARD_BATCHES.clear()
    body = infer_body("x", [[1, 2, 3, 4]], [1, 4])
    results = await asyncio.gather(
        *(client.post("/v2/models/rec/infer", json=body) for _ in range(40))
    )
    assert all(r.status == 200 for r in results)
    assert sum(test_models.FORWARD_BATCHES) == 40
    assert max(test_models.FORWARD_BATCHES) > 1


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [[True, False, True, False]]),
        ("UINT8", [[0, 1, 200, 255]]),
        ("UINT16", [[0, 1, 60000, 65535]]),
        ("UINT32", [[0, 1, 2**31, 2**32 - 1]]),
        ("UINT64", [[0, 1, 2**40, 7]]),
        ("INT8", [[-128, -1, 0, 127]]),
        ("INT16", [[-32768, -1, 0, 32767]]),
        ("INT32", [[-(2**31), -1, 0, 2**31 - 1]]),
        ("INT64", [[-(2**62), -1, 0, 2**62]]),
        ("FP16", [[0.5, -1.5, 2.0, 1024.0]]),
        ("FP32", [[0.25, -1.5, 3.0, 1e10]]),
        ("FP64", [[0.1, -1.5, 3.0, 1e300]]),
    ],
)
async def test_every_oip_datatype_round_trips(
    start_runtime: StartRuntime, datatype: str, values: list[list[Any]]
) -> None:
    client, _ = await start_runtime([tiny_model("ident", "identity", datatype)])
    resp = await client.post(
        "/v2/models/ident/infer", json=infer_body("x", values, [1, 4], datatype)
    )
    body = await resp.json()
    assert resp.status == 200, body
    out = body["outputs"][0]
    assert out["datatype"] == datatype and out["shape"] == [1, 4]
    assert out["data"] == values[0]
