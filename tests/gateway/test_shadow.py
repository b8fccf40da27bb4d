"""Shadow traffic: answered requests mirrored to a shadow version, its answers
compared with the primary's (REST and gRPC) and never returned to a client."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet.api import inference_pb2 as pb
from modelfleet.gateway.shadow import (
    MAX_IN_FLIGHT,
    Shadows,
    Tensor,
    compare,
    grpc_outputs,
    rest_outputs,
)
from tests.support.servers import free_port
from tests.support.waiting import wait_for

TOKEN = "shadow-token"
X = [1.0, 2.0, 3.0, 4.0]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]})


def tiny(version: str, architecture: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "m", "version": version, "source": "empty.safetensors",
        "architecture": f"tests.runtime.models:{architecture}",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 0}, "warmup": {"enabled": False},
        **extra,
    }  # fmt: skip


# -- reading and comparing answers (no processes) --------------------------------------


def test_rest_answers_decode_from_json_and_binary_and_grpc_from_raw() -> None:
    doc = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}]}
    assert rest_outputs(json.dumps(doc).encode(), None) == {"y": Tensor("FP32", (1, 2), (0.5, 1.5))}
    head = json.dumps({"outputs": [
        {"name": "y", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}},
    ]}).encode()  # fmt: skip
    body = head + struct.pack("<qq", -3, 9) + struct.pack("<I", 3) + b"abc"
    out = rest_outputs(body, str(len(head)))
    assert out["y"].values == (-3, 9) and out["s"].values == (b"abc",)
    answer = pb.ModelInferResponse()
    answer.outputs.add(name="y", datatype="FP64", shape=[1, 2])
    answer.raw_output_contents.append(struct.pack("<dd", 0.25, -1.0))
    assert grpc_outputs(answer.SerializeToString())["y"] == Tensor("FP64", (1, 2), (0.25, -1.0))


def test_the_comparison_reports_differences_and_arg_max_agreement() -> None:
    a = {"y": Tensor("FP32", (2, 3), (0.1, 0.7, 0.2, 0.9, 0.05, 0.05))}
    same = compare(a, a)
    assert (same.max_abs, same.max_rel, same.argmax_agree) == (0.0, 0.0, True)
    scaled = compare(a, {"y": Tensor("FP32", (2, 3), tuple(2 * v for v in a["y"].values))})
    assert scaled.argmax_agree is True and math.isclose(scaled.max_abs, 0.9)
    assert math.isclose(scaled.max_rel, 1.0)
    swapped = compare(a, {"y": Tensor("FP32", (2, 3), (0.7, 0.1, 0.2, 0.9, 0.05, 0.05))})
    assert swapped.argmax_agree is False
    regression = {"y": Tensor("FP32", (1,), (0.5,))}
    assert compare(regression, regression).argmax_agree is None  # nothing to agree on
    assert compare(a, {"y": Tensor("FP32", (3, 2), a["y"].values)}).max_abs == math.inf
    text = {"s": Tensor("BYTES", (1,), (b"cat",))}
    assert compare(text, {"s": Tensor("BYTES", (1,), (b"dog",))}).argmax_agree is False


async def test_mirrors_beyond_the_bound_are_skipped_and_failures_counted() -> None:
    from modelfleet.gateway.metrics import GatewayMetrics

    shadows = Shadows(GatewayMetrics())
    release = asyncio.Event()
    primary = {"y": Tensor("FP32", (1, 2), (1.0, 0.0))}

    async def slow() -> dict[str, Tensor]:
        await release.wait()
        return primary

    for _ in range(MAX_IN_FLIGHT + 3):
        shadows.mirror("m", "2", lambda: primary, slow)
    stats = shadows.stats["m"]
    assert stats.skipped == 3
    release.set()
    await asyncio.sleep(0)
    for _ in range(50):
        if stats.compared == MAX_IN_FLIGHT:
            break
        await asyncio.sleep(0.01)
    assert stats.compared == MAX_IN_FLIGHT and stats.summary()["agreement"] == 1.0

    async def failing() -> dict[str, Tensor]:
        raise ConnectionError("shadow down")

    shadows.mirror("m", "2", lambda: primary, failing)
    await asyncio.sleep(0.01)
    assert stats.failed == 1
    await shadows.close()


# -- through a gateway, REST and gRPC ---------------------------------------------------


def admin(gateway: Any, path: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(
        f"{gateway.admin_url}{path}", data=data, method="PUT" if data else "GET",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def routes(runtime: Any, other: Any, shadow: str | None, percent: float = 100) -> dict[str, Any]:
    """Versions 1-4 on ``runtime``, 5 on ``other``; 1 takes the traffic."""
    versions = [{"version": v, "weight": 100 if v == "1" else 0,
                 "endpoints": [(other if v == "5" else runtime).url],
                 "grpc_endpoints": [(other if v == "5" else runtime).grpc_address]}
                for v in ("1", "2", "3", "4", "5")]  # fmt: skip
    mirror = {"version": shadow, "percent": percent} if shadow else None
    return {"m": {"versions": versions, "shadow": mirror}}


@pytest.mark.integration
def test_a_shadow_is_compared_never_answers_and_never_slows_the_primary(
    procs: Any, tmp_path: Path
) -> None:
    import tritonclient.grpc as triton

    runtime = procs.runtime(
        [tiny("1", "identity"), tiny("2", "slow", architecture_kwargs={"delay_ms": 0}),
         tiny("3", "reverse"), tiny("4", "broken")],
        grpc_port=free_port(),
    )  # fmt: skip
    # The slow shadow on a pod of its own: a runtime never preempts a running batch,
    # so on the primary's pod a shadow batch delays the primary by its forward time.
    other = procs.runtime(
        [tiny("5", "slow", architecture_kwargs={"delay_ms": 3000})], grpc_port=free_port()
    )
    token = tmp_path / "token"
    token.write_text(TOKEN)
    gateway = procs.gateway(
        routes(runtime, other, "2"), grpc_port=free_port(), admin_port=free_port(),
        admin_token_file=str(token),
    )  # fmt: skip

    def rest(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            req = urllib.request.Request(f"{gateway.url}/v2/models/m/infer", data=BODY.encode())
            with urllib.request.urlopen(req, timeout=10) as resp:
                doc = json.loads(resp.read())
            times.append(time.perf_counter() - started)
            assert doc["model_version"] == "1" and doc["outputs"][0]["data"] == X
        return times

    # A shadow that doubles the outputs: arg-max agrees, the difference is measured.
    rest(30)
    seen = wait_for(
        "30 compared", lambda: (s := admin(gateway, "/admin/shadow")["m"])["compared"] == 30 and s
    )
    assert seen["version"] == "2" and seen["agreement"] == 1.0 and seen["failed"] == 0
    assert seen["worst_abs_diff"] == 4.0 and seen["worst_rel_diff"] == 1.0

    # Another shadow (reversed outputs), over gRPC: every arg-max disagrees.
    admin(gateway, "/admin/routes", json.dumps({"models": routes(runtime, other, "3")}).encode())
    client = triton.InferenceServerClient(gateway.grpc_address)
    x = triton.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([X], np.float32))
    for _ in range(20):
        result = client.infer("m", [x])
        assert result.get_response().model_version == "1"
        assert result.as_numpy("y").tolist() == [X]
    seen = wait_for(
        "20 compared", lambda: (s := admin(gateway, "/admin/shadow")["m"])["compared"] == 20 and s
    )
    assert seen["version"] == "3" and seen["agreement"] == 0.0

    # A failing shadow and a slow one: the clients see neither.
    admin(gateway, "/admin/routes", json.dumps({"models": routes(runtime, other, None)}).encode())
    baseline = sorted(rest(20))
    admin(gateway, "/admin/routes", json.dumps({"models": routes(runtime, other, "4")}).encode())
    rest(20)
    wait_for("20 failed", lambda: admin(gateway, "/admin/shadow")["m"]["failed"] == 20)
    admin(gateway, "/admin/routes", json.dumps({"models": routes(runtime, other, "5")}).encode())
    with_slow_shadow = sorted(rest(40))  # a mirror takes 3 s there: 8 under way, the rest skipped
    seen = admin(gateway, "/admin/shadow")["m"]
    assert seen["version"] == "5" and seen["skipped"] > 0, seen
    # The stated bound: the primary's median within 5 ms of its median without a shadow.
    assert with_slow_shadow[20] < baseline[10] + 0.005, (baseline, with_slow_shadow)
    metrics = urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5).read().decode()
    assert (
        'modelfleet_gateway_shadow_total{model="m",outcome="compared",version="2"} 30.0' in metrics
    )
    assert (
        'modelfleet_gateway_shadow_agreement_total{agree="false",model="m",version="3"} 20.0'
        in metrics
    )
    client.close()
