"""The gateway in front of real runtime processes, on loopback."""

from __future__ import annotations

import asyncio
import collections
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway.conftest import BODY, mlp
from tests.support.servers import ENV, free_port

pytestmark = pytest.mark.integration
TOKEN = "gw-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOW = mlp(
    "1", architecture="tests.runtime.models:slow", source="empty.safetensors",
    architecture_kwargs={"delay_ms": 20},
    inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, warmup={"enabled": False},
)  # fmt: skip
"""A model that takes 20 ms a request, one request at a time: about 50 requests/s."""
SLOW_BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return str(path)


def route(*versions: tuple[str, float, list[str]], **extra: Any) -> dict[str, Any]:
    return {
        "versions": [{"version": v, "weight": w, "endpoints": eps} for v, w, eps in versions],
        **extra,
    }


async def infer(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
                body: bytes = BODY) -> tuple[int, dict[str, Any]]:  # fmt: skip
    async with session.post(f"{url}/v2/models/mlp/infer", data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def closed_loop(url: str, concurrency: int, seconds: float) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                status, _ = await infer(session, url)
                statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def test_split_matches_weights_sticky_keys_stay_and_weight_changes_move_few(
    procs: Any, tmp_path: Path
) -> None:
    runtime = procs.runtime([mlp("1"), mlp("2")])
    gw = procs.gateway(
        {"mlp": route(("1", 75, [runtime.url]), ("2", 25, [runtime.url]))},
        admin_port=_port(), admin_token_file=token_file(tmp_path),
    )  # fmt: skip
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(16)

        async def one() -> None:
            async with sem:
                status, body = await infer(session, gw.url)
                assert status == 200, body
                counts[body["model_version"]] += 1

        await asyncio.gather(*(one() for _ in range(2000)))
        assert abs(counts["2"] / 2000 - 0.25) <= 0.02, counts

        async def versions_for(keys: list[str]) -> dict[str, str]:
            out = {}
            for key in keys:
                _, body = await infer(session, gw.url, {"X-ModelFleet-Session": key})
                out[key] = body["model_version"]
            return out

        keys = [f"user-{i}" for i in range(400)]
        await _put_routes(
            session, gw.admin_url, route(("1", 90, [runtime.url]), ("2", 10, [runtime.url]))
        )
        first = await versions_for(keys)
        assert first == await versions_for(keys), "sticky keys must keep their version"
        await _put_routes(
            session, gw.admin_url, route(("1", 80, [runtime.url]), ("2", 20, [runtime.url]))
        )
        after = await versions_for(keys)
        moved = [k for k in keys if first[k] != after[k]]
        assert 0.05 <= len(moved) / len(keys) <= 0.16, len(moved)
        assert all(after[k] == "2" for k in moved)
        # An explicit version bypasses the split; so does the header.
        async with session.post(f"{gw.url}/v2/models/mlp/versions/1/infer", data=BODY) as resp:
            assert (await resp.json())["model_version"] == "1"
        _, body = await infer(session, gw.url, {"X-ModelFleet-Version": "2"})
        assert body["model_version"] == "2"
        status, body = await infer(session, gw.url, {"X-ModelFleet-Version": "9"})
        assert status == 404 and "no version '9'" in body["error"]
        async with session.post(f"{gw.url}/v2/models/nope/infer", data=BODY) as resp:
            assert resp.status == 404
        async with session.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        assert (
            f'modelfleet_gateway_requests_total{{endpoint="{runtime.url}",model="mlp",outcome="200",protocol="rest",version="2"}}'
            in text
        )


async def test_killing_one_of_two_runtimes_under_load_shows_no_error(procs: Any) -> None:
    a, b = procs.runtime([mlp("1")]), procs.runtime([mlp("1")])
    gw = procs.gateway({"mlp": route(("1", 100, [a.url, b.url]))}, eject_s=30)
    load = asyncio.ensure_future(closed_loop(gw.url, 8, 3.0))
    await asyncio.sleep(1.0)
    b.proc.kill()
    statuses = await load
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 100


async def test_at_twice_capacity_high_priority_passes_and_low_is_shed(procs: Any) -> None:
    runtime = procs.runtime([SLOW])  # 20 ms a request: about 50 requests/s
    gw = procs.gateway(
        {"mlp": route(("1", 100, [runtime.url]), max_concurrency=2, max_waiting=4, timeout_ms=2000)}
    )
    body = SLOW_BODY
    results: dict[str, collections.Counter[int]] = {
        "high": collections.Counter(),
        "low": collections.Counter(),
    }
    retry_after: list[str] = []
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session:

        async def one(kind: str) -> None:
            headers = {"X-ModelFleet-Priority": "1" if kind == "high" else "0"}
            async with session.post(
                f"{gw.url}/v2/models/mlp/infer", data=body, headers=headers
            ) as resp:
                await resp.read()
                results[kind][resp.status] += 1
                if resp.status == 503:
                    retry_after.append(resp.headers.get("Retry-After", ""))

        tasks = []
        for _ in range(400):  # 100 requests/s for 4 s: twice the capacity
            tasks.append(asyncio.ensure_future(one("high" if rng.random() < 0.1 else "low")))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    high_ok = results["high"][200] / sum(results["high"].values())
    assert high_ok >= 0.99, results
    assert results["low"][503] > 0.2 * sum(results["low"].values()), results
    assert set(results["low"]) <= {200, 503} and all(r.isdigit() for r in retry_after)


async def test_replacing_routes_under_load_drops_nothing(procs: Any, tmp_path: Path) -> None:
    a, b = procs.runtime([mlp("1"), mlp("2")]), procs.runtime([mlp("1"), mlp("2")])
    gw = procs.gateway(
        {"mlp": route(("1", 100, [a.url]))},
        admin_port=_port(),
        admin_token_file=token_file(tmp_path),
    )
    load = asyncio.ensure_future(closed_loop(gw.url, 8, 3.0))
    tables = [
        route(("1", 50, [a.url, b.url]), ("2", 50, [b.url])),
        route(("2", 100, [a.url])),
        route(("1", 10, [b.url]), ("2", 90, [a.url, b.url])),
        route(("1", 100, [a.url])),
    ]
    async with aiohttp.ClientSession() as session:
        for i in range(12):
            await asyncio.sleep(0.2)
            await _put_routes(session, gw.admin_url, tables[i % len(tables)])
        async with session.get(f"{gw.admin_url}/admin/routes") as resp:
            assert resp.status == 401
    statuses = await load
    assert set(statuses) == {200}, statuses


async def _put_routes(
    session: aiohttp.ClientSession, admin_url: str, mlp_route: dict[str, Any]
) -> None:
    async with session.put(
        f"{admin_url}/admin/routes", json={"models": {"mlp": mlp_route}}, headers=AUTH
    ) as resp:
        assert resp.status == 200, await resp.text()


def _port() -> int:
    return free_port()


async def test_sigterm_finishes_in_flight_requests_then_exits_0(procs: Any) -> None:
    runtime = procs.runtime([SLOW])  # 20 ms a request, one at a time
    gw = procs.gateway({"mlp": route(("1", 100, [runtime.url]))})
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(f"{gw.url}/v2/models/mlp/infer", data=SLOW_BODY) as resp:
                await resp.read()
                return resp.status

        in_flight = [asyncio.ensure_future(one()) for _ in range(10)]  # about 200 ms of work
        await asyncio.sleep(0.05)
        gw.proc.terminate()
        assert await asyncio.gather(*in_flight) == [200] * 10
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{gw.url}/v2/health/live")
    assert "finishing in-flight requests" in gw.log_tail()


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys, modelfleet.gateway.main\n"
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_variable_length_sequences_through_the_gateway_all_answered_exactly(
    procs: Any, model_store: Path
) -> None:
    """A BERT-style model with bucket padding on two runtimes (one per executor)
    behind the gateway: mixed lengths at concurrency 16, no error, exact answers."""
    import numpy as np
    import torch

    from modelfleet.runtime import zoo
    from tests.runtime.test_real_models import reference, sequence, tensor, zoo_config

    bert = zoo_config("bert", batching=zoo.padded("bert"))
    runtimes = [procs.runtime([bert]), procs.runtime([bert], executor="process")]
    gw = procs.gateway({"bert": route(("1", 100, [r.url for r in runtimes]))})
    lengths = [int(n) for n in np.random.default_rng(5).integers(1, 129, size=96)]
    gate = asyncio.Semaphore(16)

    async def one(session: aiohttp.ClientSession, i: int, length: int) -> tuple[int, Any]:
        ids, mask = sequence(length, i)
        body = {"inputs": [tensor("ids", ids, "INT64"), tensor("mask", mask, "INT64")]}
        async with gate, session.post(f"{gw.url}/v2/models/bert/infer", json=body) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(one(session, i, n) for i, n in enumerate(lengths)))
    assert collections.Counter(status for status, _ in answers) == {200: len(lengths)}
    module = reference("bert", model_store)
    with torch.inference_mode():
        for i, (length, (_, doc)) in enumerate(zip(lengths, answers, strict=True)):
            ids, mask = sequence(length, i)
            want = module(torch.from_numpy(ids), torch.from_numpy(mask))["pooled"].numpy()
            pooled = next(o for o in doc["outputs"] if o["name"] == "pooled")
            np.testing.assert_allclose(np.array(pooled["data"]).reshape(1, -1), want, atol=1e-4)


async def test_the_gateway_holds_back_what_no_runtime_could_start_before_its_deadline(
    procs: Any,
) -> None:
    """The runtime reports its expected wait on every answer; while it exceeds a
    request's deadline, the gateway refuses the request itself (503 + Retry-After)
    without sending it, and sends it again once the report is stale or small."""
    runtime = procs.runtime([{**SLOW, "queue": {"max_size": 400, "timeout_ms": 30000}}])
    gw = procs.gateway({"mlp": route(("1", 100, [runtime.url]), max_concurrency=400,
                                     max_waiting=400)}, wait_report_s=0.5)  # fmt: skip
    async with aiohttp.ClientSession() as session:
        backlog = [
            asyncio.ensure_future(infer(session, gw.url, body=SLOW_BODY)) for _ in range(60)
        ]  # fmt: skip  ~1.2 s of work at 20 ms a request
        hurried = {"X-ModelFleet-Timeout-Us": "50000"}

        async def runtime_refusals() -> str:
            async with session.get(f"{runtime.url}/metrics") as resp:
                text = await resp.text()
            return "\n".join(line for line in text.splitlines() if 'reason="deadline"' in line)

        for _ in range(60):  # until an answer has brought the runtime's report back
            status, doc = await infer(session, gw.url, headers=hurried, body=SLOW_BODY)
            if status == 503 and "every endpoint expects" in doc["error"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the gateway never held a request back; last: {doc}")
        before = await runtime_refusals()
        for _ in range(5):
            t0 = time.perf_counter()
            status, doc = await infer(session, gw.url, headers=hurried, body=SLOW_BODY)
            assert status == 503 and "every endpoint expects" in doc["error"], doc
            assert (time.perf_counter() - t0) * 1000 < 50
        assert await runtime_refusals() == before, "a held-back request reached the runtime"
        await asyncio.gather(*backlog)
        await asyncio.sleep(0.6)  # the report is stale and the queue empty: sent again
        status, _ = await infer(session, gw.url, headers=hurried, body=SLOW_BODY)
        assert status == 200


async def test_a_lower_priority_model_is_held_back_to_keep_headroom_on_a_shared_runtime(
    procs: Any, tmp_path: Path
) -> None:
    """Two models share a runtime: ``low`` (priority 0, 20 ms a request) and ``mlp``
    (priority 100). Once the runtime reports more than ``holdback_wait_ms`` of queue
    wait for ``low``, the gateway refuses further ``low`` requests itself (503,
    reason ``holdback``, in milliseconds, never sent), while every ``mlp`` request is
    answered and none is held back; ``low`` is sent again once its backlog is gone. A
    ``low`` request of Triton's priority 1 is never held back."""
    low = {**SLOW, "name": "low", "priority": 0, "queue": {"max_size": 400, "timeout_ms": 30000}}
    runtime = procs.runtime([low, mlp("1", priority=100)])
    gw = procs.gateway(
        {"low": route(("1", 100, [runtime.url]), priority=0, max_concurrency=400,
                      max_waiting=400),
         "mlp": route(("1", 100, [runtime.url]), priority=100)},
        holdback_wait_ms=200, wait_report_s=0.5, admin_port=_port(),
        admin_token_file=token_file(tmp_path),
    )  # fmt: skip
    low_url = f"{gw.url}/v2/models/low/infer"

    async def call(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str]:
        async with session.post(url, data=body) as resp:
            return resp.status, await resp.text()

    async def runtime_seen(session: aiohttp.ClientSession) -> float:
        async with session.get(f"{runtime.url}/metrics") as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("modelfleet_admitted_total{") and 'model="low"' in line)  # fmt: skip

    async def gateway_shed(session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        shed: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            if line.startswith("modelfleet_gateway_shed_total{"):
                labels = dict(p.split("=") for p in line[line.index("{") + 1 : line.index("}")]
                              .replace('"', "").split(","))  # fmt: skip
                shed[f"{labels['model']}/{labels['reason']}"] += float(line.rsplit(" ", 1)[1])
        return shed

    async with aiohttp.ClientSession() as session:
        backlog = [asyncio.ensure_future(call(session, low_url, SLOW_BODY)) for _ in range(60)]
        for _ in range(60):  # ~1.2 s of work: until an answer brings the report back
            status, text = await call(session, low_url, SLOW_BODY)
            if status == 503 and "held back" in text:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the gateway never held 'low' back; last: {status} {text}")
        seen_before = await runtime_seen(session)
        for _ in range(5):
            t0 = time.perf_counter()
            status, text = await call(session, low_url, SLOW_BODY)
            assert status == 503 and "headroom" in text, text
            assert (time.perf_counter() - t0) * 1000 < 50
        high = await asyncio.gather(
            *(call(session, f"{gw.url}/v2/models/mlp/infer", BODY) for _ in range(20))
        )
        assert [s for s, _ in high] == [200] * 20, high
        assert await runtime_seen(session) == seen_before, "a held-back request reached it"
        shed = await gateway_shed(session)
        assert shed["low/holdback"] >= 5 and shed["mlp/holdback"] == 0, dict(shed)
        async with session.get(f"{gw.admin_url}/admin/shed", headers=AUTH) as resp:
            counts = await resp.json()  # what the operator adds to the models' shed rate
        assert counts["low"]["1"] == sum(v for k, v in shed.items() if k.startswith("low/"))
        assert "mlp" not in counts, counts
        # Triton's priority 1 for 'low' itself, after its tensor as tritonclient writes it:
        # not judged by the wait of the default level, whose queue it goes before.
        urgent = SLOW_BODY[:-1] + b',"parameters":{"priority":1}}'
        t0 = time.perf_counter()
        status, text = await call(session, low_url, urgent)
        assert status == 200, text
        assert (time.perf_counter() - t0) * 1000 < 500, "it waited behind the backlog"
        assert {s for s, _ in await asyncio.gather(*backlog)} <= {200, 503}
        await asyncio.sleep(0.6)  # the backlog is gone and the report stale: sent again
        status, _ = await call(session, low_url, SLOW_BODY)
        assert status == 200
