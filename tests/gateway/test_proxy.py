"""The gateway's proxying in-process, in front of scripted aiohttp upstreams on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelfleet.gateway.proxy import Gateway, build_gateway_app
from modelfleet.gateway.routes import parse_routes
from tests.support.servers import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stub:
    """An upstream runtime whose infer handler the test writes; it records requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        return await self.handler(request)


@pytest.fixture
async def start() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []
    gateways: list[Gateway] = []

    async def listen(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    class Start:
        async def stub(self, handler: Handler) -> Stub:
            stub = Stub(handler)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", stub.handle)
            stub.url = await listen(app)
            return stub

        async def gateway(self, models: dict[str, Any]) -> str:
            gateway = Gateway(parse_routes({"models": models}), seed=1)
            gateways.append(gateway)
            return await listen(build_gateway_app(gateway))

    yield Start()
    for runner in reversed(runners):
        await runner.cleanup()
    for gateway in gateways:
        await gateway.close()


def answer(status: int = 200, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"model_version": "1"}, status=status, headers=headers)

    return handler


def one_version(*endpoints: str, **extra: Any) -> dict[str, Any]:
    return {"mlp": {"versions": [{"version": "1", "endpoints": list(endpoints)}], **extra}}


async def test_a_busy_endpoint_is_retried_once_on_another(start: Any) -> None:
    busy = await start.stub(answer(503, **{"Retry-After": "2"}))
    free = await start.stub(answer(200, **{"X-ModelFleet-Queue-Depth": "3"}))
    gw = await start.gateway(one_version(busy.url, free.url))
    async with aiohttp.ClientSession() as session:
        for _ in range(10):
            async with session.post(f"{gw}/v2/models/mlp/infer", data=b"{}") as resp:
                assert resp.status == 200
        also_busy = await start.stub(answer(503, **{"Retry-After": "2"}))
        gw2 = await start.gateway(one_version(busy.url, also_busy.url))
        async with session.post(f"{gw2}/v2/models/mlp/infer", data=b"{}") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "2"
        async with session.get(f"{gw}/metrics") as resp:
            text = await resp.text()
    assert 'reason="busy"' in text and 'outcome="200"' in text


async def test_the_deadline_goes_to_the_runtime_and_an_overrun_answers_504(start: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({})

    fast, late = await start.stub(answer()), await start.stub(slow)
    gw = await start.gateway(
        {
            **one_version(fast.url, timeout_ms=5000),
            "late": one_version(late.url, timeout_ms=200)["mlp"],
        }
    )
    async with aiohttp.ClientSession() as session:
        headers = {"X-ModelFleet-Priority": "1", "X-ModelFleet-Timeout-Us": "250000"}
        async with session.post(f"{gw}/v2/models/mlp/infer", data=b"{}", headers=headers) as resp:
            assert resp.status == 200
        path, seen = fast.seen[-1]
        assert path == "/v2/models/mlp/versions/1/infer"
        assert 200_000 < int(seen["X-ModelFleet-Timeout-Us"]) <= 250_000  # the client's, shorter
        assert seen["X-ModelFleet-Priority"] == "1"
        async with session.post(f"{gw}/v2/models/late/infer", data=b"{}") as resp:
            assert resp.status == 504
            assert "did not answer within" in (await resp.json())["error"]
        assert int(late.seen[-1][1]["X-ModelFleet-Timeout-Us"]) <= 200_000


async def test_metadata_and_readiness_are_proxied_and_health_is_the_gateways_own(
    start: Any,
) -> None:
    stub = await start.stub(answer())
    gw = await start.gateway(one_version(stub.url))
    async with aiohttp.ClientSession() as session:
        for path in ("/v2/models/mlp", "/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
            async with session.get(gw + path) as resp:
                assert resp.status == 200, path
        assert [p for p, _ in stub.seen] == [
            "/v2/models/mlp/versions/1", "/v2/models/mlp/versions/1/ready",
            "/v2/models/mlp/versions/1/ready",
        ]  # fmt: skip
        for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            async with session.get(gw + path) as resp:
                assert resp.status == 200, path
        async with session.post(f"{gw}/v2/models/nope/infer", data=b"{}") as resp:
            assert resp.status == 404
            assert (await resp.json()) == {"error": "unknown model 'nope'"}
    assert len(stub.seen) == 3


async def test_an_unreachable_endpoint_is_ejected_and_the_request_retried(start: Any) -> None:
    stub = await start.stub(answer())
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await start.gateway(one_version(dead, stub.url))
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.post(f"{gw}/v2/models/mlp/infer", data=b"{}") as resp:
                assert resp.status == 200
        async with session.get(f"{gw}/metrics") as resp:
            text = await resp.text()
    retried = [line for line in text.splitlines() if "retries_total{" in line and dead in line]
    assert retried and retried[0].endswith(" 1.0"), retried  # ejected after the first failure
    only_dead = await start.gateway(one_version(dead))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{only_dead}/v2/models/mlp/infer", data=b"{}") as resp,
    ):
        assert resp.status == 502
        assert "cannot connect" in (await resp.json())["error"]
