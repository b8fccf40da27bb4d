"""The operator's Kubernetes client against a scripted API server: typed errors,
retry with back-off where a retry can help, and none where it cannot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from modelfleet.operator import kube as kube_module
from modelfleet.operator.kube import Conflict, Kube, NotFound, ServerError, TooManyRequests

Script = list[tuple[int, dict[str, str]]]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module, "BACKOFF_S", 0.001)


async def serve(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], script: Script
) -> tuple[Kube, list[str]]:
    """A server answering each request with the next (status, headers) of ``script``
    (the last one repeats); returns a client logged in to it and the calls it saw."""
    calls: list[str] = []
    logins: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        status, headers = script[min(len(calls), len(script)) - 1]
        body = b'{"items": []}' if status < 400 else b"nope"
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app)

    def login() -> kopf.ConnectionInfo:
        logins.append(1)
        return kopf.ConnectionInfo(server=str(server.make_url("/")), token=f"t{len(logins)}")

    return Kube(login), calls


async def test_a_missing_object_is_none_and_other_errors_are_typed(aiohttp_server: Any) -> None:
    kube, calls = await serve(aiohttp_server, [(404, {})])
    assert await kube.get("v1", "ConfigMap", "ns", "gone") is None
    with pytest.raises(NotFound):
        await kube.list("v1", "Pod", "ns")
    assert len(calls) == 2  # a 404 is never retried
    await kube.close()

    kube, calls = await serve(aiohttp_server, [(409, {})])
    with pytest.raises(Conflict) as caught:
        await kube.apply({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": "m", "namespace": "ns"}})  # fmt: skip
    assert caught.value.status == 409 and len(calls) == 1
    await kube.close()


async def test_throttling_and_server_errors_are_retried_with_backoff(aiohttp_server: Any) -> None:
    kube, calls = await serve(aiohttp_server, [(429, {"Retry-After": "0"}), (503, {}), (200, {})])
    assert await kube.list("v1", "Pod", "ns") == []
    assert len(calls) == 3
    await kube.close()

    kube, calls = await serve(aiohttp_server, [(500, {})])
    with pytest.raises(ServerError):
        await kube.get("v1", "ConfigMap", "ns", "x")
    assert len(calls) == kube_module.RETRIES
    await kube.close()

    kube, calls = await serve(aiohttp_server, [(429, {"Retry-After": "0"})])
    with pytest.raises(TooManyRequests):
        await kube.list("v1", "Pod", "ns")
    assert len(calls) == kube_module.RETRIES
    await kube.close()


async def test_a_post_is_retried_only_when_the_server_did_not_act(aiohttp_server: Any) -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
    kube, calls = await serve(aiohttp_server, [(503, {})])
    await kube.event(obj, "Placed", "x")  # best effort: the error is swallowed
    assert len(calls) == 1  # a 503 may have created it: not sent twice
    await kube.close()

    kube, calls = await serve(aiohttp_server, [(429, {"Retry-After": "0"}), (201, {})])
    await kube.event(obj, "Placed", "x")
    assert len(calls) == 2  # a 429 was not acted on: sent again
    await kube.close()


async def test_an_expired_token_logs_in_again_once(aiohttp_server: Any) -> None:
    kube, calls = await serve(aiohttp_server, [(401, {}), (200, {})])
    assert await kube.list("v1", "Pod", "ns") == []
    assert len(calls) == 2
    await kube.close()

    kube, calls = await serve(aiohttp_server, [(401, {})])
    with pytest.raises(kube_module.KubeError) as caught:
        await kube.list("v1", "Pod", "ns")
    assert caught.value.status == 401 and len(calls) == 2
    await kube.close()
