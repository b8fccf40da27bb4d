"""Model formats and safety, warm-up, memory budget, cache, admin API convergence."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from modelfleet.runtime.admin import build_admin_app
from modelfleet.runtime.examples import mlp
from tests.runtime import models as test_models
from tests.runtime.conftest import StartRuntime, infer_body, mlp_config, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
GOOD = infer_body("input", [[0.5] * 16], [1, 16])


async def states(runtime: Any) -> dict[str, tuple[str, str]]:
    return {
        f"{m.config.name}:{m.config.version}": (str(m.state), m.reason or "")
        for m in runtime.repository.all_models()
    }


@pytest.fixture(scope="module")
def other_formats(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> dict[str, Path]:
    """The MLP as a state dict, a torch.export archive and TorchScript."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("formats")
    module = mlp()
    module.load_state_dict(load_file(str(model_store / "mlp.safetensors")))
    module.eval()
    torch.save(module.state_dict(), out / "mlp.pt")
    example = (torch.zeros(2, 16),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch.export.save(exported, str(out / "mlp.pt2"))
    torch.jit.script(module).save(str(out / "mlp.ts"))  # type: ignore[no-untyped-call]
    return {"state_dict": out / "mlp.pt", "export": out / "mlp.pt2", "torchscript": out / "mlp.ts"}


async def test_all_formats_give_the_same_answer(
    start_runtime: StartRuntime, other_formats: dict[str, Path]
) -> None:
    models = [mlp_config()]
    for fmt, path in other_formats.items():
        extra: dict[str, Any] = {"trusted": True} if fmt == "torchscript" else {}
        if fmt == "export":
            extra["architecture"] = None
        models.append(mlp_config(name=f"mlp-{fmt.replace('_', '-')}", source=str(path), **extra))
    client, runtime = await start_runtime(models)
    assert all(state == "ready" for state, _ in (await states(runtime)).values()), await states(
        runtime
    )
    answers = []
    for m in models:
        resp = await client.post(f"/v2/models/{m['name']}/infer", json=GOOD)
        assert resp.status == 200, await resp.text()
        answers.append((await resp.json())["outputs"][0]["data"])
    for answer in answers[1:]:
        np.testing.assert_allclose(answer, answers[0], rtol=1e-5)


async def test_torchscript_is_refused_unless_trusted(
    start_runtime: StartRuntime, other_formats: dict[str, Path]
) -> None:
    client, runtime = await start_runtime(
        [mlp_config(), mlp_config(name="ts", source=str(other_formats["torchscript"]))]
    )
    state, reason = (await states(runtime))["ts:1"]
    assert state == "failed" and "trusted: true" in reason
    resp = await client.post("/v2/models/ts/infer", json=GOOD)
    assert resp.status == 503 and "failed to load" in (await resp.json())["error"]
    assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 200


async def test_sha256_is_verified_before_loading(
    start_runtime: StartRuntime, model_store: Path
) -> None:
    good = hashlib.sha256((model_store / "mlp.safetensors").read_bytes()).hexdigest()
    _, runtime = await start_runtime(
        [mlp_config(sha256=good), mlp_config(name="tampered", sha256="0" * 64)]
    )
    found = await states(runtime)
    assert found["mlp:1"][0] == "ready"
    assert found["tampered:1"][0] == "failed" and "checksum mismatch" in found["tampered:1"][1]


async def test_missing_file_and_bad_architecture_fail_with_clear_reasons(
    start_runtime: StartRuntime,
) -> None:
    _, runtime = await start_runtime(
        [
            mlp_config(name="missing", source="nope.safetensors"),
            mlp_config(name="noarch", architecture="no.such.module:factory"),
            mlp_config(name="mismatch", architecture="modelfleet.runtime.examples:cnn"),
        ]
    )
    found = await states(runtime)
    assert "not found" in found["missing:1"][1]
    assert "cannot import architecture" in found["noarch:1"][1]
    assert "does not fit the architecture" in found["mismatch:1"][1]


async def test_warmup_runs_each_batch_bucket_before_ready(start_runtime: StartRuntime) -> None:
    test_models.FORWARD_BATCHES.clear()
    _, runtime = await start_runtime(
        [tiny_model("rec", "recorder", batching={"max_batch_size": 12}, warmup={"data": "random"})]
    )
    assert test_models.FORWARD_BATCHES == [1, 2, 4, 8, 12]
    assert runtime.is_ready()


async def test_memory_budget_refuses_a_load_and_unloading_frees_it(
    start_runtime: StartRuntime,
) -> None:
    # The MLP holds (16*64 + 64 + 64*4 + 4) * 4 bytes = 5,392 bytes.
    _, runtime = await start_runtime([mlp_config()], memory_budget_mb=0.008)
    repo = runtime.repository
    assert repo.memory_in_use() == 5392
    second = await repo.load_one(parse_model(mlp_config(name="second")))
    assert second.reason and "memory budget exceeded" in second.reason and "second" in second.reason
    await repo.unload_name("mlp")
    assert repo.memory_in_use() == 0
    again = await repo.load_one(parse_model(mlp_config(name="second")))
    assert again.reason is None and repo.memory_in_use() == 5392


def parse_model(data: dict[str, Any]) -> Any:
    from modelfleet.runtime.config import ModelConfig

    return ModelConfig.model_validate(data)


async def test_cache_hit_skips_the_queue(start_runtime: StartRuntime) -> None:
    test_models.FORWARD_BATCHES.clear()
    client, _ = await start_runtime(
        [tiny_model("rec", "recorder", cache={"enabled": True}, warmup={"enabled": False})]
    )
    body = infer_body("x", [[1.0, 2.0, 3.0, 4.0]], [1, 4])
    first = await (await client.post("/v2/models/rec/infer", json=body)).json()
    second = await (await client.post("/v2/models/rec/infer", json={**body, "id": "other"})).json()
    assert first["outputs"] == second["outputs"] and second["id"] == "other"
    assert test_models.FORWARD_BATCHES == [1]
    metrics = await (await client.get("/metrics")).text()
    assert 'modelfleet_cache_hits_total{model="rec",version="1"} 1.0' in metrics


async def test_metrics_report_requests_latency_batches_queue_and_memory(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime([mlp_config()])
    await client.post("/v2/models/mlp/infer", json=GOOD)
    await client.post("/v2/models/mlp/infer", json=infer_body("input", [[1]], [1, 1]))
    text = await (await client.get("/metrics")).text()
    for line in (
        'modelfleet_requests_total{model="mlp",outcome="ok",protocol="rest",version="1"} 1.0',
        'modelfleet_requests_total{model="mlp",outcome="400",protocol="rest",version="1"} 1.0',
        'modelfleet_request_latency_seconds_count{model="mlp",protocol="rest",version="1"} 1.0',
        'modelfleet_queue_seconds_count{model="mlp",version="1"} 1.0',
        'modelfleet_compute_seconds_count{model="mlp",version="1"} 1.0',
        'modelfleet_batch_size_count{model="mlp",version="1"} 1.0',
        'modelfleet_queue_depth{model="mlp",version="1"} 0.0',
        "modelfleet_device_memory_bytes 5392.0",
    ):
        assert line in text, line


@pytest.fixture
async def admin(start_runtime: StartRuntime) -> Any:
    async def start(
        models: list[dict[str, Any]],
    ) -> tuple[TestClient[Any, Any], TestClient[Any, Any], Any]:
        client, runtime = await start_runtime(models)
        admin_client: TestClient[Any, Any] = TestClient(
            TestServer(build_admin_app(runtime, "s3cret", asyncio.Event()))
        )
        await admin_client.start_server()
        clients.append(admin_client)
        return client, admin_client, runtime

    clients: list[TestClient[Any, Any]] = []
    yield start
    for c in clients:
        await c.close()


AUTH = {"Authorization": "Bearer s3cret"}


async def test_admin_api_needs_the_bearer_token(admin: Any) -> None:
    _, admin_client, _ = await admin([mlp_config()])
    assert (await admin_client.get("/admin/state")).status == 401
    resp = await admin_client.get("/admin/state", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert (await admin_client.get("/admin/state", headers=AUTH)).status == 200


async def test_put_state_converges_while_other_models_keep_serving(admin: Any) -> None:
    client, admin_client, runtime = await admin([mlp_config()])
    stop = asyncio.Event()
    statuses: list[int] = []

    async def traffic() -> None:
        while not stop.is_set():
            statuses.append((await client.post("/v2/models/mlp/infer", json=GOOD)).status)

    load = asyncio.ensure_future(traffic())
    new = [mlp_config(), mlp_config(name="cnn", source="cnn.safetensors",
           architecture="modelfleet.runtime.examples:cnn",
           inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
           outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}])]  # fmt: skip
    resp = await admin_client.put("/admin/state", json={"models": new}, headers=AUTH)
    assert resp.status == 202
    await wait_until("the CNN ready", lambda: runtime.repository.models.get(("cnn", "1")) is not None
                     and str(runtime.repository.models[("cnn", "1")].state) == "ready")  # fmt: skip
    image = infer_body("image", [0.0] * 784, [1, 1, 28, 28])
    assert (await client.post("/v2/models/cnn/infer", json=image)).status == 200
    # Remove the MLP, change the CNN's batching in place.
    changed = [{**new[1], "batching": {"max_batch_size": 4, "max_queue_delay_ms": 1}}]
    stop.set()
    await load
    resp = await admin_client.put("/admin/state", json={"models": changed}, headers=AUTH)
    cnn = runtime.repository.models[("cnn", "1")]
    # The MLP leaves the routes, then its module is freed (on the device thread when a
    # batch is just ending), then the CNN's settings change: wait for the last step.
    await wait_until(
        "the MLP gone and the CNN's new batching applied",
        lambda: (
            ("mlp", "1") not in runtime.repository.models
            and not runtime.repository.draining
            and cnn.queue.batching.max_batch_size == 4
        ),
    )
    assert set(statuses) == {200}, "traffic to the MLP failed while the CNN loaded"
    assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 404
    state = await (await admin_client.get("/admin/state", headers=AUTH)).json()
    assert [m["name"] for m in state["actual"]["models"]] == ["cnn"]
    assert state["actual"]["models"][0]["state"] == "ready"
    assert state["desired"]["models"][0]["batching"]["max_batch_size"] == 4


async def test_admin_state_reports_recent_p99_and_when_each_copy_became_ready(admin: Any) -> None:
    client, admin_client, _ = await admin([mlp_config()])
    state = await (await admin_client.get("/admin/state", headers=AUTH)).json()
    (before,) = state["actual"]["models"]
    assert before["p99_ms"] is None and before["loaded_at"] > 1.7e9
    for _ in range(20):
        assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 200
    state = await (await admin_client.get("/admin/state", headers=AUTH)).json()
    (after,) = state["actual"]["models"]
    assert after["served"] == 20 and 0 < after["p99_ms"] < 5000
    assert after["loaded_at"] == before["loaded_at"]  # no reload happened


async def test_put_state_with_a_new_optimize_setting_reloads_the_module(admin: Any) -> None:
    _, admin_client, runtime = await admin([mlp_config()])
    assert not isinstance(runtime.repository.models[("mlp", "1")].module, torch.jit.ScriptModule)
    traced = [mlp_config(optimize="trace")]
    resp = await admin_client.put("/admin/state", json={"models": traced}, headers=AUTH)
    assert resp.status == 202
    await wait_until(
        "the traced module ready",
        lambda: (
            isinstance(
                getattr(runtime.repository.models.get(("mlp", "1")), "module", None),
                torch.jit.ScriptModule,
            )
            and str(runtime.repository.models[("mlp", "1")].state) == "ready"
        ),
    )


async def test_put_state_rejects_an_invalid_document_with_the_field(admin: Any) -> None:
    _, admin_client, _ = await admin([mlp_config()])
    bad = {"models": [mlp_config(batching={"max_batch_size": 0})]}
    resp = await admin_client.put("/admin/state", json=bad, headers=AUTH)
    body = await resp.json()
    assert resp.status == 400 and "batching.max_batch_size" in body["error"]


async def test_repository_extension_index_load_unload(admin: Any) -> None:
    client, admin_client, _ = await admin([mlp_config()])
    index = await (await admin_client.post("/v2/repository/index", headers=AUTH)).json()
    assert index == [{"name": "mlp", "version": "1", "state": "READY", "reason": ""}]
    resp = await admin_client.post("/v2/repository/models/mlp/unload", headers=AUTH)
    assert resp.status == 200
    assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 404
    resp = await admin_client.post(
        "/v2/repository/models/mlp/load",
        json={"parameters": {"config": mlp_config()}},
        headers=AUTH,
    )
    assert resp.status == 200, await resp.text()
    assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 200
    resp = await admin_client.post("/v2/repository/models/ghost/load", headers=AUTH)
    assert resp.status == 400 and "not in the desired state" in (await resp.json())["error"]


async def test_optimize_trace_serves_the_same_answers(start_runtime: StartRuntime) -> None:
    client, runtime = await start_runtime([mlp_config(), mlp_config(name="fast", optimize="trace")])
    assert isinstance(runtime.repository.models[("fast", "1")].module, torch.jit.ScriptModule)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    body = infer_body("input", x.tolist(), [5, 16])
    plain = await (await client.post("/v2/models/mlp/infer", json=body)).json()
    fast = await (await client.post("/v2/models/fast/infer", json=body)).json()
    np.testing.assert_allclose(
        fast["outputs"][0]["data"], plain["outputs"][0]["data"], rtol=1e-4, atol=1e-5
    )


async def test_optimize_inference_serves_the_cnn_with_onednn_kernels_and_the_same_answers(
    start_runtime: StartRuntime,
) -> None:
    cnn: dict[str, Any] = {
        "source": "cnn.safetensors", "architecture": "modelfleet.runtime.examples:cnn",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "batching": {"max_batch_size": 4},
    }  # fmt: skip
    client, runtime = await start_runtime(
        [{"name": "cnn", **cnn}, {"name": "fast", "optimize": "inference", **cnn}]
    )
    module = runtime.repository.models[("fast", "1")].module
    assert isinstance(module, torch.jit.ScriptModule) and "mkldnn" in str(module.graph)
    x = np.random.default_rng(4).standard_normal((3, 1, 28, 28)).astype(np.float32)
    body = infer_body("image", x.ravel().tolist(), [3, 1, 28, 28])
    plain = await (await client.post("/v2/models/cnn/infer", json=body)).json()
    fast = await (await client.post("/v2/models/fast/infer", json=body)).json()
    np.testing.assert_allclose(
        fast["outputs"][0]["data"], plain["outputs"][0]["data"], rtol=1e-4, atol=1e-5
    )
