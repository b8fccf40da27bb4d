"""Every refusal has its status and a message that names what is wrong; bad input
never kills the server nor loses other requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.runtime.conftest import StartRuntime, batch_stats, infer_body, mlp_config, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

GOOD = infer_body("input", [[0.5] * 16], [1, 16])


async def expect_error(resp: Any, status: int, *fragments: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (infer_body("wrong", [[0.5] * 16], [1, 16]), ["unknown input 'wrong'", "'input'"]),
        (infer_body("input", [[1] * 16], [1, 16], "INT32"), ["input 'input'", "INT32", "FP32"]),
        (infer_body("input", [[0.5] * 15], [1, 15]), ["shape [1, 15]", "[-1, 16]"]),
        (infer_body("input", [0.5] * 10, [1, 16]), ["10 values", "needs 16"]),
        (infer_body("input", [], [0, 16]), ["empty"]),
        (infer_body("input", [[float("nan")] + [0.0] * 15], [1, 16]), ["NaN"]),
        ({"inputs": []}, ["non-empty 'inputs'"]),
        ({"inputs": [{"name": "input"}]}, ["datatype"]),
        (infer_body("input", [["a"] * 16], [1, 16]), ["not a valid FP32"]),
        ({**GOOD, "parameters": {"priority": -1}}, ["priority"]),
        ({**GOOD, "outputs": [{"name": "nope"}]}, ["unknown output 'nope'"]),
    ],
)
async def test_bad_input_gets_400_naming_the_problem(
    start_runtime: StartRuntime, body: dict[str, Any], fragments: list[str]
) -> None:
    client, _ = await start_runtime([mlp_config()])
    resp = await client.post("/v2/models/mlp/infer", data=json.dumps(body))
    await expect_error(resp, 400, *fragments)


async def test_malformed_json_is_a_400(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([mlp_config()])
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        resp = await client.post("/v2/models/mlp/infer", data=raw)
        await expect_error(resp, 400)


async def test_unknown_model_and_version_are_404(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([mlp_config()])
    await expect_error(
        await client.post("/v2/models/nope/infer", json=GOOD), 404, "unknown model 'nope'"
    )
    await expect_error(
        await client.post("/v2/models/mlp/versions/9/infer", json=GOOD),
        404,
        "no version '9'",
        "known: 1",
    )
    await expect_error(await client.get("/v2/models/nope"), 404)
    await expect_error(await client.get("/v3/whatever"), 404)


async def test_oversized_body_is_413(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([mlp_config()], max_body_bytes=4096)
    big = infer_body("input", [[0.5] * 16] * 400, [400, 16])
    await expect_error(await client.post("/v2/models/mlp/infer", json=big), 413, "4096 bytes")
    resp = await client.post("/v2/models/mlp/infer", json=GOOD)
    assert resp.status == 200


async def test_full_queue_rejects_with_503_and_earlier_requests_complete(
    start_runtime: StartRuntime,
) -> None:
    slow = tiny_model(
        "slow", "slow", architecture_kwargs={"delay_ms": 150},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 2}, warmup={"enabled": False},
    )  # fmt: skip
    client, runtime = await start_runtime([slow])
    model = runtime.repository.models[("slow", "1")]
    body = infer_body("x", [[1.0, 2.0, 3.0, 4.0]], [1, 4])
    first = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=body))
    await wait_until("the first running", lambda: model.inflight == 1 and not len(model.queue))
    queued = [
        asyncio.ensure_future(client.post("/v2/models/slow/infer", json=body)) for _ in range(2)
    ]
    await wait_until("the next two queued", lambda: len(model.queue) == 2)
    refused = await client.post("/v2/models/slow/infer", json=body)
    await expect_error(refused, 503, "queue of model 'slow'", "full")
    for fut in (first, *queued):
        resp = await fut
        assert resp.status == 200
        assert (await resp.json())["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


async def test_high_priority_request_displaces_a_queued_low_one_when_full(
    start_runtime: StartRuntime,
) -> None:
    slow = tiny_model(
        "slow", "slow", architecture_kwargs={"delay_ms": 200},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 2}, warmup={"enabled": False},
    )  # fmt: skip
    client, runtime = await start_runtime([slow])
    model = runtime.repository.models[("slow", "1")]
    low = infer_body("x", [[1.0, 2.0, 3.0, 4.0]], [1, 4])
    high = {**low, "parameters": {"priority": 1}}
    running = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=low))
    await wait_until("the first running", lambda: model.inflight == 1 and not len(model.queue))
    queued = [
        asyncio.ensure_future(client.post("/v2/models/slow/infer", json=low)) for _ in range(2)
    ]
    await wait_until("two low ones queued", lambda: len(model.queue) == 2)
    # A low one is refused before its body is read (header says its level) ...
    refused = await client.post(
        "/v2/models/slow/infer", json=low, headers={"X-ModelFleet-Priority": "5"}
    )
    await expect_error(refused, 503, "full")
    # ... a high one takes the place of the newest low one.
    urgent = await client.post("/v2/models/slow/infer", json=high)
    assert urgent.status == 200
    statuses = sorted([(await f).status for f in (running, *queued)])
    assert statuses == [200, 200, 503]
    shed = next(r for r in [await f for f in queued] if r.status == 503)
    assert "higher-priority request" in (await shed.json())["error"]


async def test_deadline_expired_in_queue_is_503_and_never_executed(
    start_runtime: StartRuntime,
) -> None:
    slow = tiny_model(
        "slow", "slow", architecture_kwargs={"delay_ms": 300},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, warmup={"enabled": False},
    )  # fmt: skip
    client, runtime = await start_runtime([slow])
    model = runtime.repository.models[("slow", "1")]
    body = infer_body("x", [[1.0, 2.0, 3.0, 4.0]], [1, 4])
    first = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=body))
    await wait_until("the first running", lambda: model.inflight == 1 and not len(model.queue))
    # Triton's timeout is in microseconds: 50 ms, shorter than the running batch.
    short = {**body, "parameters": {"timeout": 50_000}}
    resp = await client.post("/v2/models/slow/infer", json=short)
    await expect_error(resp, 503, "deadline expired", "not executed")
    assert (await first).status == 200
    await wait_until("the model idle", lambda: model.inflight == 0 and not len(model.queue))
    _, rows = batch_stats(runtime, "slow")
    assert rows == 1, "the expired request must never reach the model"


async def test_rate_limit_is_429_with_retry_after(start_runtime: StartRuntime) -> None:
    client, _ = await start_runtime([mlp_config(rate_limit={"requests_per_second": 1, "burst": 2})])
    statuses = []
    for _ in range(3):
        resp = await client.post("/v2/models/mlp/infer", json=GOOD)
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert int(resp.headers["Retry-After"]) >= 1
    await expect_error(resp, 429, "limited to 1 requests/s")


async def test_a_failing_model_answers_500_and_the_server_keeps_serving(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime(
        [mlp_config(), tiny_model("bad", "broken", warmup={"enabled": False})]
    )
    resp = await client.post("/v2/models/bad/infer", json=infer_body("x", [[1, 2, 3, 4]], [1, 4]))
    await expect_error(resp, 500, "model 'bad'", "always fails")
    assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status == 200


async def test_many_concurrent_bad_requests_mixed_with_good_ones(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime([mlp_config()])
    bad_bodies: list[bytes] = [
        b"{oops",
        json.dumps(infer_body("input", [[0.5] * 3], [1, 3])).encode(),
        json.dumps(infer_body("input", [[1] * 16], [1, 16], "INT64")).encode(),
        json.dumps(
            {"inputs": [{"name": "input", "shape": "x", "datatype": "FP32", "data": 1}]}
        ).encode(),
        json.dumps(infer_body("input", [[float("inf")] * 16], [1, 16])).encode(),
    ]
    good = json.dumps(GOOD).encode()
    jobs = []
    for i in range(200):
        body = good if i % 2 == 0 else bad_bodies[i % len(bad_bodies)]
        jobs.append(client.post("/v2/models/mlp/infer", data=body))
    responses = await asyncio.gather(*jobs)
    for i, resp in enumerate(responses):
        assert resp.status == (200 if i % 2 == 0 else 400), i
    assert (await client.get("/v2/health/ready")).status == 200
