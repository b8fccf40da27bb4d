"""A model scaled to zero: its requests wait at the gateway for a first copy, in a
bounded line, each until its deadline (503 with Retry-After), never hanging."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelfleet.api.routes import ModelRoute, RoutesDocument
from modelfleet.gateway.cold import ColdStart
from modelfleet.gateway.metrics import GatewayMetrics
from modelfleet.serving.errors import Unavailable
from tests.gateway.conftest import BODY, mlp
from tests.support.servers import free_port
from tests.support.waiting import wait_for

TOKEN = "cold-token"


def cold_route(*endpoints: str, max_waiting: int = 4, grpc: tuple[str, ...] = ()) -> ModelRoute:
    return ModelRoute.model_validate({
        "cold": True, "max_waiting": max_waiting,
        "versions": [{"version": "1", "endpoints": list(endpoints), "grpc_endpoints": list(grpc)}],
    })  # fmt: skip


async def test_a_held_request_is_woken_by_routes_with_a_copy_and_bounded_otherwise() -> None:
    cold = ColdStart(GatewayMetrics())
    routes = {"m": cold_route()}

    async def held() -> ModelRoute:
        return await cold.copy_for("m", routes["m"], time.monotonic() + 5, routes.__getitem__)

    warm = ModelRoute.model_validate({"versions": [{"version": "1"}]})
    assert await cold.copy_for("w", warm, time.monotonic(), routes.__getitem__) is warm
    waiters = [asyncio.ensure_future(held()) for _ in range(4)]
    await asyncio.sleep(0.01)
    assert cold.summary()["m"]["waiting"] == 4
    with pytest.raises(Unavailable, match="4 requests already wait") as full:
        await held()
    assert full.value.headers["Retry-After"] == "5"
    routes["m"] = cold_route("http://127.0.0.1:1")
    cold.routes_changed(RoutesDocument(models=routes))
    assert all(r.versions[0].endpoints for r in await asyncio.gather(*waiters))
    routes["m"] = cold_route()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no copy became ready within") as late:
        await cold.copy_for("m", routes["m"], time.monotonic() + 0.2, routes.__getitem__)
    assert 0.2 <= time.monotonic() - started < 1.0 and "Retry-After" in late.value.headers
    assert cold.summary()["m"] == {"waiting": 0, "held": 5, "last_held_at": pytest.approx(
        time.time(), abs=2)}  # fmt: skip


def admin(gateway: Any, path: str, data: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"{gateway.admin_url}{path}", data=json.dumps(data).encode() if data else None,
        method="PUT" if data else "GET",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.integration
def test_the_first_requests_after_scale_to_zero_wait_for_the_copy_and_are_answered(
    procs: Any, tmp_path: Path
) -> None:
    import concurrent.futures

    import numpy as np
    import tritonclient.grpc as triton

    token = tmp_path / "token"
    token.write_text(TOKEN)
    gateway = procs.gateway(
        {"mlp": {"cold": True, "versions": [{"version": "1"}]}},
        grpc_port=free_port(), admin_port=free_port(), admin_token_file=str(token),
    )  # fmt: skip

    def rest(headers: dict[str, str] | None = None) -> tuple[int, float, dict[str, str]]:
        started = time.monotonic()
        req = urllib.request.Request(f"{gateway.url}/v2/models/mlp/infer", data=BODY,
                                     headers=headers or {})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, time.monotonic() - started, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, time.monotonic() - started, dict(exc.headers)

    def grpc_call() -> list[list[float]]:
        with triton.InferenceServerClient(gateway.grpc_address) as client:
            x = triton.InferInput("input", [1, 16], "FP32")
            x.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))
            return client.infer("mlp", [x], client_timeout=30).as_numpy("output").tolist()

    # A request whose deadline is short gets 503 + Retry-After at its deadline.
    status, took, headers = rest({"X-ModelFleet-Timeout-Us": "300000"})
    assert status == 503 and headers["Retry-After"] == "5" and 0.3 <= took < 2.0
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        held = [pool.submit(rest), pool.submit(rest), pool.submit(grpc_call)]
        wait_for("3 requests held", lambda: admin(gateway, "/admin/demand")["mlp"]["waiting"] == 3,
                 interval=0.05)  # fmt: skip
        # The copy: a runtime started now (the operator would place and warm one).
        runtime = procs.runtime([mlp("1")], grpc_port=free_port())
        admin(gateway, "/admin/routes", {"models": {"mlp": {"cold": True, "versions": [
            {"version": "1", "endpoints": [runtime.url],
             "grpc_endpoints": [runtime.grpc_address]}]}}})  # fmt: skip
        answers = [f.result(timeout=30) for f in held]
    assert [a[0] for a in answers[:2]] == [200, 200]
    assert len(answers[2][0]) == 4
    demand = admin(gateway, "/admin/demand")["mlp"]
    assert demand["waiting"] == 0 and demand["held"] == 4
    metrics = urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5).read().decode()
    assert 'modelfleet_gateway_cold_held_total{model="mlp",outcome="served"} 3.0' in metrics
    assert 'modelfleet_gateway_cold_held_total{model="mlp",outcome="timeout"} 1.0' in metrics
