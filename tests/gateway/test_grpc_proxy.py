"""The gateway's gRPC proxy: tritonclient through it answers as the runtime does,
with REST's split, stickiness, retries, deadlines and priorities; the bytes pass
untouched but for the version the split chose."""

from __future__ import annotations

import asyncio
import collections
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_sync
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from modelfleet.api import inference_pb2 as pb
from modelfleet.gateway.grpc_proxy import (
    SERVICE,
    build_grpc_proxy,
    head_fields,
    priority_of,
    request_head,
    transport_failure,
    with_version,
)
from modelfleet.gateway.proxy import Gateway
from modelfleet.gateway.routes import parse_routes
from modelfleet.serving.errors import BadRequest
from tests.gateway.conftest import mlp
from tests.support.servers import RuntimeProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
SLOW = mlp(
    "1", name="slow", architecture="tests.runtime.models:slow", source="empty.safetensors",
    architecture_kwargs={"delay_ms": 400},
    inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, warmup={"enabled": False},
)  # fmt: skip
"""400 ms a request, one at a time."""


def grpc_route(*versions: tuple[str, float, list[RuntimeProcess]], **extra: Any) -> dict[str, Any]:
    """A route whose versions list each runtime's REST URL and gRPC address."""
    return {
        "versions": [
            {"version": v, "weight": w, "endpoints": [r.url for r in runtimes],
             "grpc_endpoints": [r.grpc_address for r in runtimes]}
            for v, w, runtimes in versions
        ],
        **extra,
    }  # fmt: skip


def mlp_input(x: np.ndarray = X) -> Any:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def slow_input() -> Any:
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return tensor


def metrics_of(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (labels in any order), 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- through real runtimes ------------------------------------------------------------


async def test_tritonclient_through_the_gateway_answers_what_the_runtime_answers(
    procs: Any,
) -> None:
    runtime = procs.runtime([mlp("1")], grpc_port=free_port())
    gw = procs.gateway({"mlp": grpc_route(("1", 100, [runtime]))}, grpc_port=free_port())
    client = triton.InferenceServerClient(gw.grpc_address)
    direct = triton.InferenceServerClient(runtime.grpc_address)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        server = await client.get_server_metadata(as_json=True)
        assert server["name"] == "modelfleet-gateway"
        assert await client.is_model_ready("mlp") and await client.is_model_ready("mlp", "1")
        meta = await client.get_model_metadata("mlp", as_json=True)
        assert meta == await direct.get_model_metadata("mlp", as_json=True)
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}]
        result = await client.infer("mlp", [mlp_input()], request_id="req-7")
        response = result.get_response()
        assert response.id == "req-7" and response.model_version == "1"
        want = (await direct.infer("mlp", [mlp_input()])).as_numpy("output")
        got = result.as_numpy("output")
        assert got is not None and want is not None and got.shape == (2, 4)
        np.testing.assert_array_equal(got, want)
        for call in (
            client.infer("nope", [mlp_input()]),
            client.get_model_metadata("nope"),
            client.is_model_ready("nope"),
        ):
            with pytest.raises(InferenceServerException) as info:
                await call
            assert info.value.status() == "StatusCode.NOT_FOUND"
            assert "unknown model 'nope'" in (info.value.message() or "")
    finally:
        await client.close()
        await direct.close()

    def sync_calls() -> tuple[bool, bool, str, np.ndarray | None]:
        with triton_sync.InferenceServerClient(gw.grpc_address) as sync:
            tensor = triton_sync.InferInput("input", [2, 16], "FP32")
            tensor.set_data_from_numpy(X)
            result = sync.infer("mlp", [tensor], request_id="sync-1")
            return (
                sync.is_server_live(),
                sync.is_model_ready("mlp"),
                result.get_response().id,
                result.as_numpy("output"),
            )

    live, ready, request_id, out = await asyncio.to_thread(sync_calls)
    assert live and ready and request_id == "sync-1"
    np.testing.assert_array_equal(out, got)
    text = await asyncio.to_thread(metrics_of, gw.url)
    labels = {"endpoint": runtime.url, "model": "mlp", "version": "1", "protocol": "grpc"}
    assert sample(text, "modelfleet_gateway_requests_total", outcome="200", **labels) >= 2
    assert sample(text, "modelfleet_gateway_requests_total", outcome="404", **labels) == 0


async def test_split_sticky_sessions_and_forced_versions_over_grpc(procs: Any) -> None:
    runtime = procs.runtime([mlp("1"), mlp("2")], grpc_port=free_port())
    gw = procs.gateway(
        {"mlp": grpc_route(("1", 80, [runtime]), ("2", 20, [runtime]))}, grpc_port=free_port()
    )
    client = triton.InferenceServerClient(gw.grpc_address)
    try:

        async def version_of(**kwargs: Any) -> str:
            result = await client.infer("mlp", [mlp_input(X[:1])], **kwargs)
            return str(result.get_response().model_version)

        counts: collections.Counter[str] = collections.Counter()
        gate = asyncio.Semaphore(16)

        async def one() -> None:
            async with gate:
                counts[await version_of()] += 1

        await asyncio.gather(*(one() for _ in range(2000)))
        assert sum(counts.values()) == 2000
        assert abs(counts["2"] / 2000 - 0.20) <= 0.02, counts
        # Sticky: a session key keeps its version; the keys spread over both.
        sessions = {}
        for i in range(60):
            headers = {"x-modelfleet-session": f"user-{i}"}
            seen = {await version_of(headers=headers) for _ in range(3)}
            assert len(seen) == 1, (i, seen)
            sessions[i] = seen.pop()
        assert set(sessions.values()) == {"1", "2"}, sessions
        # Forced, by the request's model_version or by metadata.
        assert {await version_of(model_version="2") for _ in range(20)} == {"2"}
        assert {await version_of(model_version="1") for _ in range(20)} == {"1"}
        forced = {"x-modelfleet-version": "2"}
        assert {await version_of(headers=forced) for _ in range(20)} == {"2"}
        with pytest.raises(InferenceServerException) as info:
            await version_of(model_version="9")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "no version '9'" in (info.value.message() or "")
    finally:
        await client.close()


async def test_killing_one_of_two_runtimes_under_a_grpc_stream_shows_no_error(
    procs: Any,
) -> None:
    a = procs.runtime([mlp("1")], grpc_port=free_port())
    b = procs.runtime([mlp("1")], grpc_port=free_port())
    gw = procs.gateway({"mlp": grpc_route(("1", 100, [a, b]))}, grpc_port=free_port(), eject_s=30)
    client = triton.InferenceServerClient(gw.grpc_address)
    answered: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    stop_at = time.monotonic() + 3.0

    async def worker() -> None:
        while time.monotonic() < stop_at:
            try:
                result = await client.infer("mlp", [mlp_input()])
                assert result.as_numpy("output") is not None
                answered["ok"] += 1
            except InferenceServerException as exc:
                errors.append(f"{exc.status()}: {exc.message()}")

    try:
        load = asyncio.gather(*(worker() for _ in range(4)))
        await wait_until("a steady stream through both", lambda: answered["ok"] >= 50)
        before = answered["ok"]
        await asyncio.to_thread(b.kill)
        await load
    finally:
        await client.close()
    assert errors == []
    assert answered["ok"] - before > 50, answered
    text = await asyncio.to_thread(metrics_of, gw.url)
    retried = {"model": "mlp", "endpoint": b.url, "reason": "unreachable"}
    assert sample(text, "modelfleet_gateway_retries_total", **retried) >= 1


async def test_the_deadline_and_the_priority_reach_the_runtime(procs: Any) -> None:
    """A request with 150 ms to its deadline (the client's gRPC deadline, or its
    x-modelfleet-timeout-us) for a model that takes 400 ms is refused by the runtime
    itself, at once, and never run; Triton's priority parameter is the level the
    runtime admits a request at."""
    runtime = procs.runtime([SLOW], grpc_port=free_port())
    gw = procs.gateway({"slow": grpc_route(("1", 100, [runtime]))}, grpc_port=free_port())
    client = triton.InferenceServerClient(gw.grpc_address)
    try:
        await client.infer("slow", [slow_input()])  # the runtime measures its 400 ms
        hurried: list[dict[str, Any]] = [
            {"client_timeout": 0.15},
            {"headers": {"x-modelfleet-timeout-us": "150000"}},
        ]
        for how in hurried:
            t0 = time.perf_counter()
            with pytest.raises(InferenceServerException) as info:
                await client.infer("slow", [slow_input()], **how)
            message = info.value.message() or ""
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED", (how, message)
            assert "cannot answer within the request's deadline" in message, (how, message)
            left_ms = int(re.search(r"(\d+) ms left", message).group(1))  # type: ignore[union-attr]
            assert 0 < left_ms <= 150, message
            assert time.perf_counter() - t0 < 0.15, "refused at once, not at the deadline"
        await client.infer("slow", [slow_input()], priority=1)
    finally:
        await client.close()
    text = await asyncio.to_thread(metrics_of, runtime.url)
    model = {"model": "slow", "version": "1"}
    assert sample(text, "modelfleet_shed_total", priority="5", reason="deadline", **model) == 2
    assert sample(text, "modelfleet_admitted_total", priority="1", **model) == 1
    assert sample(text, "modelfleet_batch_size_count", **model) == 2, "the refused never ran"


# -- in-process, in front of scripted gRPC runtimes ----------------------------------

Script = Callable[[bytes, Any], Awaitable[bytes]]


class StubRuntime:
    """A gRPC runtime whose ModelInfer the test scripts; it records what it got."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[tuple[bytes, dict[str, Any]]] = []
        self.address = ""

    async def infer(self, body: bytes, context: Any) -> bytes:
        self.seen.append((body, dict(context.invocation_metadata() or ())))
        return await self.script(body, context)


@pytest.fixture
async def stubs() -> AsyncIterator[Any]:
    servers: list[grpc.aio.Server] = []
    gateways: list[Gateway] = []

    class Start:
        async def runtime(self, script: Script) -> StubRuntime:
            stub = StubRuntime(script)
            server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
            handler = grpc.unary_unary_rpc_method_handler(stub.infer)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
            )
            stub.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
            await server.start()
            servers.append(server)
            return stub

        async def gateway(
            self, *targets: str, server: dict[str, Any] | None = None, **route: Any
        ) -> tuple[Gateway, str]:
            version = {
                "version": "1",
                "endpoints": [f"http://127.0.0.1:{9000 + i}" for i in range(len(targets))],
                "grpc_endpoints": list(targets),
            }
            document = parse_routes(
                {"server": server or {}, "models": {"mlp": {"versions": [version], **route}}}
            )
            gateway = Gateway(document, seed=1)
            server = build_grpc_proxy(gateway)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            gateways.append(gateway)
            return gateway, f"127.0.0.1:{port}"

    yield Start()
    for server in servers:
        await server.stop(0)
    for gateway in gateways:
        await gateway.close()


def answer(**trailing: str) -> Script:
    async def script(body: bytes, context: Any) -> bytes:
        request = pb.ModelInferRequest.FromString(body)
        context.set_trailing_metadata(tuple(trailing.items()))
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ).SerializeToString()

    return script


def refuse(code: grpc.StatusCode, details: str, **trailing: str) -> Script:
    async def script(body: bytes, context: Any) -> bytes:
        await context.abort(code, details, tuple(trailing.items()))
        raise AssertionError

    return script


async def infer(address: str, request: pb.ModelInferRequest, **kwargs: Any) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        call = method(request.SerializeToString(), **kwargs)
        body = await call
        return pb.ModelInferResponse.FromString(body), dict(await call.trailing_metadata() or ())


async def refused(address: str, request: pb.ModelInferRequest, **kwargs: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await infer(address, request, **kwargs)
    return info.value


async def test_busy_runtimes_retried_once_and_their_answers_pass_through(stubs: Any) -> None:
    busy = await stubs.runtime(
        refuse(grpc.StatusCode.UNAVAILABLE, "queue full", **{"retry-after": "2"})
    )
    free = await stubs.runtime(answer(**{"x-modelfleet-queue-depth": "3", "retry-after": "7"}))
    gateway, address = await stubs.gateway(busy.address, free.address)
    request = pb.ModelInferRequest(model_name="mlp", id="r1")
    for _ in range(10):
        response, trailing = await infer(address, request)
        assert response.id == "r1" and response.model_version == "1"
        assert trailing["x-modelfleet-queue-depth"] == "3" and trailing["retry-after"] == "7"
    assert free.seen and all(dict(m)["x-modelfleet-timeout-us"].isdigit() for _, m in free.seen)
    assert {e.queue_depth for e in gateway.table.endpoints.values()} == {0, 3}
    assert all(e.failures == 0 for e in gateway.table.endpoints.values()), "busy is no failure"
    also_busy = await stubs.runtime(
        refuse(grpc.StatusCode.UNAVAILABLE, "queue full", **{"retry-after": "2"})
    )
    _, address2 = await stubs.gateway(busy.address, also_busy.address)
    error = await refused(address2, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error.details() == "queue full"
    assert dict(error.trailing_metadata())["retry-after"] == "2"
    # Other runtime errors pass through as they came, not retried.
    bad = await stubs.runtime(refuse(grpc.StatusCode.INVALID_ARGUMENT, "input 'x' is wrong"))
    _, address3 = await stubs.gateway(bad.address)
    error = await refused(address3, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'x' is wrong" and len(bad.seen) == 1


async def test_a_dead_target_is_ejected_and_the_request_goes_elsewhere(stubs: Any) -> None:
    live = await stubs.runtime(answer())
    dead = f"127.0.0.1:{free_port()}"
    gateway, address = await stubs.gateway(dead, live.address, server={"eject_s": 30})
    for _ in range(6):
        response, _ = await infer(address, pb.ModelInferRequest(model_name="mlp"))
        assert response.model_version == "1"
    ejected = [e for e in gateway.table.endpoints.values() if e.failures]
    assert len(ejected) == 1 and ejected[0].url == "http://127.0.0.1:9000"
    assert len(live.seen) == 6
    # Nothing to fall back on: UNAVAILABLE from the gateway, naming the failure.
    _, alone = await stubs.gateway(dead)
    error = await refused(alone, pb.ModelInferRequest(model_name="mlp"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "failed" in (error.details() or ""), error.details()


async def test_gateway_refusals_and_the_deadline_sent_upstream(stubs: Any) -> None:
    async def slow(body: bytes, context: Any) -> bytes:
        await asyncio.sleep(1.0)
        return b""

    fast, late = await stubs.runtime(answer()), await stubs.runtime(slow)
    _, address = await stubs.gateway(fast.address, timeout_ms=5000)
    await infer(address, pb.ModelInferRequest(model_name="mlp"), timeout=0.25)
    sent_us = int(fast.seen[-1][1]["x-modelfleet-timeout-us"])
    # gRPC sends the timeout as a duration that the receiver turns back into a deadline
    # (rounded up to its unit): the time left can read a few µs above what the client
    # asked (250,076 µs once in CI).
    assert 200_000 < sent_us <= 251_000, "the client's deadline, shorter than the route's"
    assert "x-modelfleet-priority" not in fast.seen[-1][1], "the default level is not sent"
    request = pb.ModelInferRequest(model_name="mlp")
    request.parameters["priority"].int64_param = 2
    await infer(address, request)
    assert fast.seen[-1][1]["x-modelfleet-priority"] == "2"
    await infer(address, request, metadata=(("x-modelfleet-priority", "3"),))
    assert fast.seen[-1][1]["x-modelfleet-priority"] == "3", "the client's metadata first"
    _, late_address = await stubs.gateway(late.address, timeout_ms=200)
    t0 = time.perf_counter()
    error = await refused(late_address, pb.ModelInferRequest(model_name="mlp"))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer within" in (error.details() or "")
    assert time.perf_counter() - t0 < 0.6
    assert int(late.seen[-1][1]["x-modelfleet-timeout-us"]) <= 200_000
    error = await refused(address, pb.ModelInferRequest(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in error.details()
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{SERVICE}/ModelInfer")(b"\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_large_requests_pass_as_sent_and_dropped_targets_lose_their_channel(
    stubs: Any,
) -> None:
    runtime = await stubs.runtime(answer())
    gateway, address = await stubs.gateway(runtime.address, server={"max_body_bytes": 32 << 20})
    big = _request(size=24 << 20)  # more than gRPC's 4 MiB default, less than the limit
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        method = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        answer_bytes = await method(big.SerializeToString())
        assert pb.ModelInferResponse.FromString(answer_bytes).model_version == "1"
        big.model_version = "1"  # forced: the bytes go on exactly as they came
        assert await method(big.SerializeToString())
    sent, _ = runtime.seen[0]
    assert sent == with_version(_request(size=24 << 20).SerializeToString(), "1")
    assert runtime.seen[1][0] == big.SerializeToString()
    assert gateway.channels.connected(runtime.address)
    other = await stubs.runtime(answer())
    gateway.replace(
        parse_routes({"models": {"mlp": {"versions": [
            {"version": "1", "endpoints": ["http://127.0.0.1:9100"],
             "grpc_endpoints": [other.address]},
        ]}}})
    )  # fmt: skip
    assert not gateway.channels.connected(runtime.address), "its channel is closed"
    response, _ = await infer(address, pb.ModelInferRequest(model_name="mlp"))
    assert response.model_version == "1" and len(other.seen) == 1 and len(runtime.seen) == 2


async def test_a_draining_gateway_refuses_new_infers(stubs: Any) -> None:
    runtime = await stubs.runtime(answer())
    gateway, address = await stubs.gateway(runtime.address)
    client = triton.InferenceServerClient(address)
    try:
        assert await client.is_server_ready()
        gateway.draining = True
        assert not await client.is_server_ready() and await client.is_server_live()
        error = await refused(address, pb.ModelInferRequest(model_name="mlp"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (error.details() or "")
        assert dict(error.trailing_metadata())["retry-after"] == "1"
    finally:
        await client.close()


# -- the request's head and the version appended (no processes) ----------------------


def _request(version: str = "", size: int = 16) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 16])
    request = pb.ModelInferRequest(
        model_name="mlp", model_version=version, id="req-1", inputs=[tensor],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="output")],
        raw_input_contents=[bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)],
    )  # fmt: skip
    request.parameters["priority"].uint64_param = 2
    return request


@pytest.mark.parametrize("size", [64, 1 << 20])
def test_the_appended_version_wins_and_the_tensors_stay_as_they_were(size: int) -> None:
    original = _request(size=size)
    body = original.SerializeToString()
    changed = pb.ModelInferRequest.FromString(with_version(body, "2"))
    assert changed.model_version == "2"
    assert changed.raw_input_contents == original.raw_input_contents
    assert list(changed.inputs) == list(original.inputs)
    assert list(changed.outputs) == list(original.outputs)
    assert (changed.model_name, changed.id) == ("mlp", "req-1")
    assert changed.parameters["priority"].uint64_param == 2
    changed.model_version = ""
    assert changed == original, "nothing else differs"
    # Last one wins: a version already there is replaced, whatever its length.
    named = _request("a-long-version-name", size).SerializeToString()
    assert pb.ModelInferRequest.FromString(with_version(named, "7")).model_version == "7"
    head = request_head(with_version(body, "2"))
    assert (head.model_name, head.model_version, head.id) == ("mlp", "2", "req-1")


def test_the_head_of_a_large_request_is_read_without_its_tensors() -> None:
    body = _request(size=1 << 20).SerializeToString()
    assert len(head_fields(body)) < 100
    scanned = request_head(body)
    whole = pb.ModelInferRequestHead.FromString(body)
    assert scanned.model_name == whole.model_name == "mlp"
    assert scanned.id == "req-1" and priority_of(scanned) == 2
    assert priority_of(request_head(_request(size=64).SerializeToString())) == 2
    request = _request()
    request.parameters["priority"].int64_param = 0
    assert priority_of(request_head(request.SerializeToString())) is None
    with pytest.raises(BadRequest, match="not a valid ModelInferRequest"):
        request_head(b"\xff\xff\xff")
    with pytest.raises(BadRequest, match="not a valid ModelInferRequest"):
        request_head(body[: len(body) - 10])  # a truncated large request


def test_a_transport_failure_is_told_from_a_runtime_answering_unavailable() -> None:
    def error(code: grpc.StatusCode, details: str, *trailing: tuple[str, str]) -> Any:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing),
                                    details)  # fmt: skip

    unavailable = grpc.StatusCode.UNAVAILABLE
    assert transport_failure(error(unavailable, "Stream removed (Socket closed)"), True)
    assert transport_failure(error(unavailable, "failed to connect to all addresses"), True)
    assert transport_failure(error(grpc.StatusCode.UNKNOWN, "Stream removed"), True)
    assert transport_failure(error(unavailable, "whatever"), connected=False)
    assert not transport_failure(error(unavailable, "queue full"), connected=True)
    busy = error(unavailable, "Socket closed", ("retry-after", "1"))
    assert not transport_failure(busy, connected=False), "trailing metadata: the server spoke"
    assert not transport_failure(error(grpc.StatusCode.NOT_FOUND, "Socket closed"), False)
