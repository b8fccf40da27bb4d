"""The gateway's gRPC data plane: ``inference.GRPCInferenceService`` proxied to the
runtimes' gRPC APIs with REST's routing.

A ``ModelInfer`` request is routed from its head alone: the bytes are parsed into
``ModelInferRequestHead`` (fields 1-4: model name, version, id, parameters) and
the original bytes go on, tensors never decoded. The version is chosen as for REST
(``Gateway.choose``: the request's ``model_version`` or ``x-modelfleet-version``
metadata forces it, else the traffic split, sticky by ``x-modelfleet-session``);
the request passes the same admission gate and hold-back, and the endpoint comes
from the same P2C balancer over the same ``Endpoint`` state (in-flight counts,
ejection, reported waits), each endpoint's gRPC target being the entry of
``grpc_endpoints`` at its index in ``endpoints``. The runtime gets the priority
level and the time left (``x-modelfleet-priority``, ``x-modelfleet-timeout-us``)
as metadata, and the deadline as the call's gRPC deadline: the earliest of the
route's ``timeout_ms``, the client's gRPC deadline and its
``x-modelfleet-timeout-us``.

Retries, as REST: a transport failure (nothing answered; see
:func:`transport_failure`) ejects the endpoint and tries another; a runtime's own
UNAVAILABLE answer (busy, draining) is tried once more elsewhere. The runtime's
answer returns as it came: response bytes and trailing metadata, or its status
code, details and trailing metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from modelfleet.api import headers as contract
from modelfleet.api import inference_pb2 as pb
from modelfleet.gateway.balancer import Endpoint, pick
from modelfleet.gateway.proxy import DEFAULT_LEVEL, Gateway, note_report
from modelfleet.gateway.routes import ModelRoute, VersionRoute
from modelfleet.gateway.shadow import SHADOW_LEVEL, Outputs, grpc_outputs
from modelfleet.gateway.upstream import UpstreamError
from modelfleet.serving.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    ServingError,
    Unavailable,
)
from modelfleet.serving.grpc_status import HTTP_STATUS, grpc_code, trailing_metadata
from modelfleet.version import VERSION

log = logging.getLogger("modelfleet.gateway")
SERVICE = "inference.GRPCInferenceService"
Context = grpc.aio.ServicerContext[bytes, bytes]
Metadata = tuple[tuple[str, str | bytes], ...]
SESSION_KEY = contract.SESSION.lower()
VERSION_KEY = contract.VERSION.lower()
PRIORITY_KEY = contract.PRIORITY.lower()
TIMEOUT_KEY = contract.TIMEOUT_US.lower()
_SCAN_FROM_BYTES = 64 * 1024
"""Requests this large are scanned for their head fields rather than parsed whole."""
_TRANSPORT_WORDS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "stream removed",
    "broken pipe",
    "goaway",
    "transport closed",
    "endpoint closing",
    "keepalive",
    "connection timed out",
)
"""What gRPC's core says, in its status details, of a connection that failed."""


# -- the request's head and the version-append trick -----------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise DecodeError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift >= 64:
            raise DecodeError("varint longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def head_fields(body: bytes) -> bytes:
    """The encoded top-level fields 1-4 of a serialized ``ModelInferRequest``, in
    their order, without the tensors (fields 5-7), which are stepped over by their
    length: a few steps per request however large its tensors, where parsing the
    whole message would copy them into the head's unknown fields."""
    out: list[bytes] = []
    i, end = 0, len(body)
    while i < end:
        start = i
        key, i = _varint(body, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(body, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(body, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise DecodeError(f"field {field} has wire type {wire}, which proto3 never uses")
        if i > end:
            raise DecodeError(f"field {field} runs past the end of the message")
        if 1 <= field <= 4:
            out.append(body[start:i])
    return b"".join(out)


def request_head(body: bytes) -> pb.ModelInferRequestHead:
    """What the gateway reads of a ``ModelInferRequest``: name, version, id, parameters."""
    head = pb.ModelInferRequestHead()
    try:
        head.ParseFromString(body if len(body) < _SCAN_FROM_BYTES else head_fields(body))
    except DecodeError as exc:
        raise BadRequest(f"the request is not a valid ModelInferRequest: {exc}") from None
    return head


_VERSION_KEY_BYTE = _encode_varint(2 << 3 | 2)
"""Field 2 (``model_version`` in ``ModelInferRequest``, ``version`` in
``ModelReadyRequest`` and ``ModelMetadataRequest``), wire type 2 (length-delimited)."""


def with_version(body: bytes, version: str) -> bytes:
    """``body`` (a serialized request whose field 2 is its version) naming ``version``.

    The field is appended rather than the message re-encoded: protobuf parsers
    must accept a message whose fields come in any order, and for a singular
    scalar field that appears more than once the last value wins (the protobuf
    encoding spec, "Last One Wins"). So ``body`` + the encoded field parses as
    the same request with ``version`` set, whatever ``body`` held in field 2
    (here: nothing), every tensor byte as it was. It costs one copy of the body
    (a new ``bytes``), never a decode."""
    encoded = version.encode()
    return body + _VERSION_KEY_BYTE + _encode_varint(len(encoded)) + encoded


def priority_of(head: pb.ModelInferRequestHead) -> int | None:
    """The request's ``priority`` parameter when it is a positive integer."""
    if "priority" not in head.parameters:
        return None
    parameter = head.parameters["priority"]
    which = parameter.WhichOneof("parameter_choice")
    if which == "uint64_param":
        return parameter.uint64_param or None
    if which == "int64_param" and parameter.int64_param > 0:
        return parameter.int64_param
    return None


# -- errors -------------------------------------------------------------------------


class RuntimeAnswered(Exception):
    """The runtime's error status, passed to the client as it came."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: Metadata) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.metadata = metadata


def passed_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """A call's metadata minus gRPC's reserved keys (which the server sets itself)."""
    return tuple((k, v) for k, v in metadata or () if not k.startswith("grpc-"))


def transport_failure(error: grpc.aio.AioRpcError, connected: bool) -> bool:
    """Whether a call failed because the connection did (the endpoint is to be
    ejected) rather than because the runtime answered with an error status.

    gRPC reports both as a status: a connection refused, reset or closed mid-call
    is UNAVAILABLE (sometimes UNKNOWN or INTERNAL, "Stream removed") made up on
    this side, while a busy or draining runtime answers UNAVAILABLE itself. A
    runtime's answer has the runtime's details and nearly always trailing metadata
    (every refusal of ours carries ``retry-after``); a failure made up here has no
    trailing metadata, details in gRPC core's words, and usually leaves the
    channel not connected. So: no trailing metadata, and either core's words or,
    for UNAVAILABLE, a channel no longer connected (``connected``)."""
    code = error.code()
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL):  # fmt: skip
        return False
    if passed_metadata(error.trailing_metadata()):
        return False
    details = (error.details() or "").lower()
    if any(word in details for word in _TRANSPORT_WORDS):
        return True
    return code is grpc.StatusCode.UNAVAILABLE and not connected


def _metadata(context: Context) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _outcome(code: grpc.StatusCode) -> str:
    return str(HTTP_STATUS.get(code, 500))


# -- the proxy ----------------------------------------------------------------------


class GrpcProxy:
    """The RPCs. Each raises :class:`ServingError` or :class:`RuntimeAnswered`, and
    :func:`answering` turns either into the status the client gets."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def server_live(self, _: bytes, __: Context) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, _: bytes, __: Context) -> bytes:
        return pb.ServerReadyResponse(ready=not self.gateway.draining).SerializeToString()

    async def server_metadata(self, _: bytes, __: Context) -> bytes:
        return pb.ServerMetadataResponse(
            name="modelfleet-gateway", version=VERSION, extensions=[]
        ).SerializeToString()

    async def model_ready(self, body: bytes, context: Context) -> bytes:
        request = _parse(pb.ModelReadyRequest, body)
        return await self.forward(
            "ModelReady", body, request.name, request.version, context, admit=False
        )

    async def model_metadata(self, body: bytes, context: Context) -> bytes:
        request = _parse(pb.ModelMetadataRequest, body)
        return await self.forward(
            "ModelMetadata", body, request.name, request.version, context, admit=False
        )

    async def model_infer(self, body: bytes, context: Context) -> bytes:
        if self.gateway.draining:
            raise Unavailable("the gateway is shutting down", retry_after_s=1)
        head = request_head(body)
        return await self.forward(
            "ModelInfer", body, head.model_name, head.model_version, context,
            admit=True, priority=priority_of(head),
        )  # fmt: skip

    async def forward(
        self,
        method: str,
        body: bytes,
        model: str,
        asked_version: str,
        context: Context,
        *,
        admit: bool,
        priority: int | None = None,
    ) -> bytes:
        """``Gateway.forward`` for gRPC: choose, admit, send, count."""
        started = time.perf_counter()
        gateway = self.gateway
        metadata = _metadata(context)
        if not model:
            raise BadRequest("the request names no model ('name' / 'model_name' is empty)")
        route = gateway.route(model)
        now = time.monotonic()
        deadline = _deadline(context, metadata, now + route.timeout_ms / 1000, now)
        if admit:  # scaled to zero: held until a copy is ready (or the deadline)
            route = await gateway.cold.copy_for(model, route, deadline, gateway.route)
        version = gateway.choose(
            model, route, asked_version or metadata.get(VERSION_KEY), metadata.get(SESSION_KEY)
        )
        if not asked_version:  # chosen here: the runtime must serve that version
            body = with_version(body, version.version)
        header_level = metadata.get(PRIORITY_KEY, "")
        level = (int(header_level) if header_level.isdigit() else priority) or DEFAULT_LEVEL
        gate = gateway.table.admission[model]
        outcome, endpoint = "error", ""
        try:
            try:
                await gateway.admit(model, route, version, level, deadline, gate if admit else None)
            except Unavailable:
                outcome = "shed"
                raise
            in_flight = gateway.metrics.in_flight_of(model)
            in_flight.inc()
            try:
                endpoint, response, trailing = await self._attempts(
                    method, model, version, body, deadline, level
                )
            except RuntimeAnswered as exc:
                outcome = _outcome(exc.code)
                raise
            except GatewayTimeout:
                outcome = "timeout"
                raise
            except (BadGateway, Unavailable) as exc:
                outcome = "unreachable" if isinstance(exc, BadGateway) else str(exc.status)
                raise
            finally:
                in_flight.dec()
                if admit:
                    gate.release()
            outcome = "200"
            if trailing:
                context.set_trailing_metadata(trailing)
            shadow = gateway.shadow_of(route, version) if method == "ModelInfer" else None
            if shadow is not None:
                gateway.shadows.mirror(
                    model, shadow.version, lambda: grpc_outputs(response),
                    lambda: self._shadow(model, route, shadow, body),
                )  # fmt: skip
            return response
        finally:
            gateway.metrics.answered(
                model, version.version, endpoint, outcome, time.perf_counter() - started, "grpc"
            )

    async def _shadow(
        self, model: str, route: ModelRoute, shadow: VersionRoute, body: bytes
    ) -> Outputs:
        """Sends a mirrored ``ModelInfer`` to the shadow version; its outputs."""
        endpoints, targets = self._targets(model, shadow)
        endpoint = pick(endpoints, time.monotonic(), self.gateway.rng, set())
        if endpoint is None:
            raise Unavailable(f"shadow version '{shadow.version}' has no endpoint")
        target = targets[endpoint.url]
        timeout = route.timeout_ms / 1000
        channels = self.gateway.channels
        await channels.connect(target, timeout)
        answer: bytes = await channels.method(target, f"/{SERVICE}/ModelInfer")(
            with_version(body, shadow.version),
            timeout=timeout,
            metadata=((PRIORITY_KEY, str(SHADOW_LEVEL)),),
        )
        return grpc_outputs(answer)

    def _targets(self, model: str, version: VersionRoute) -> tuple[list[Endpoint], dict[str, str]]:
        """The version's endpoints and the gRPC target of each (by URL); UNAVAILABLE
        when it has none that speaks gRPC."""
        endpoints = self.gateway.table.endpoints
        targets = {
            url: target
            for url, target in zip(version.endpoints, version.grpc_endpoints, strict=False)
            if url in endpoints
        }
        if not targets:
            what = "ready endpoint" if not version.endpoints else "gRPC endpoint"
            raise Unavailable(
                f"model '{model}' version '{version.version}' has no {what}", retry_after_s=1
            )
        return [endpoints[url] for url in targets], targets

    async def _attempts(
        self,
        method: str,
        model: str,
        version: VersionRoute,
        body: bytes,
        deadline: float,
        level: int,
    ) -> tuple[str, bytes, Metadata]:
        """``Gateway._attempts`` for gRPC: another endpoint when the connection fails,
        and once when the runtime answers UNAVAILABLE."""
        gateway = self.gateway
        channels = gateway.channels
        endpoints, targets = self._targets(model, version)
        path = f"/{SERVICE}/{method}"
        upstream_metadata: list[tuple[str, str]] = []
        if level != DEFAULT_LEVEL:
            upstream_metadata.append((PRIORITY_KEY, str(level)))
        last_error: Exception = BadGateway(f"no endpoint of model '{model}' could be reached")
        tried: set[str] = set()
        busy_retried = False
        for _ in range(min(gateway.config.max_attempts, len(endpoints))):
            endpoint = pick(endpoints, time.monotonic(), gateway.rng, tried)
            if endpoint is None:
                break
            tried.add(endpoint.url)
            target = targets[endpoint.url]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            endpoint.outstanding += 1
            try:
                await channels.connect(target, remaining)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                call = channels.method(target, path)(
                    body,
                    timeout=remaining,
                    metadata=(*upstream_metadata, (TIMEOUT_KEY, str(int(remaining * 1e6)))),
                )
                response = await call
                trailing = passed_metadata(await call.trailing_metadata())
            except UpstreamError as exc:
                last_error = gateway.unreachable(endpoint, model, version, exc, target)
                continue
            except TimeoutError:
                raise GatewayTimeout(
                    f"model '{model}' version '{version.version}': no connection to {target} "
                    "before the request's deadline"
                ) from None
            except grpc.aio.AioRpcError as exc:
                if transport_failure(exc, channels.connected(target)):
                    last_error = gateway.unreachable(
                        endpoint, model, version, UpstreamError(exc.details()), target
                    )
                    continue
                trailing = passed_metadata(exc.trailing_metadata())
                endpoint.succeeded()
                note_report(endpoint, model, {k: v for k, v in trailing if isinstance(v, str)})
                code, details = exc.code(), exc.details() or ""
                if code is grpc.StatusCode.DEADLINE_EXCEEDED and not trailing:
                    raise GatewayTimeout(
                        f"model '{model}' version '{version.version}' did not answer within "
                        f"{remaining * 1000:.0f} ms at {target}"
                    ) from None
                last_error = RuntimeAnswered(code, details, trailing)
                if (
                    code is grpc.StatusCode.UNAVAILABLE
                    and not busy_retried
                    and len(tried) < len(endpoints)
                ):
                    busy_retried = True  # full or draining there: another pod may have room
                    gateway.metrics.retries.labels(model, endpoint.url, "busy").inc()
                    continue
                raise last_error from None
            finally:
                endpoint.outstanding -= 1
            endpoint.succeeded()
            note_report(endpoint, model, {k: v for k, v in trailing if isinstance(v, str)})
            return endpoint.url, response, trailing
        if time.monotonic() >= deadline:
            raise GatewayTimeout(f"model '{model}' did not answer within its deadline")
        raise last_error


def _parse(kind: type[Any], body: bytes) -> Any:
    message: Message = kind()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise BadRequest(f"the request is not a valid {kind.__name__}: {exc}") from None
    return message


def _deadline(context: Context, metadata: dict[str, str], deadline: float, now: float) -> float:
    """The gateway's deadline, or the client's (its gRPC deadline, its
    ``x-modelfleet-timeout-us``) when sooner."""
    remaining = context.time_remaining()
    if remaining is not None:
        deadline = min(deadline, now + remaining)
    asked_us = metadata.get(TIMEOUT_KEY, "")
    if asked_us.isdigit():
        deadline = min(deadline, now + int(asked_us) / 1e6)
    return deadline


Handler = Callable[[bytes, Context], Awaitable[bytes]]


def answering(handler: Handler) -> Handler:
    """Turns a :class:`ServingError` into its gRPC status (its headers into trailing
    metadata), passes a runtime's error status on as it came, and answers anything
    unexpected INTERNAL (logged)."""

    async def rpc(body: bytes, context: Context) -> bytes:
        try:
            return await handler(body, context)
        except RuntimeAnswered as exc:
            code, details, metadata = exc.code, exc.details, exc.metadata
        except ServingError as exc:
            code, details = grpc_code(exc), exc.message
            metadata = trailing_metadata(exc)
        except Exception:
            log.exception("unexpected error in gRPC %s", getattr(handler, "__name__", "?"))
            code, details, metadata = grpc.StatusCode.INTERNAL, "internal server error", ()
        await context.abort(code, details, metadata)
        raise AssertionError("unreachable: abort raises")

    return rpc


def build_grpc_proxy(gateway: Gateway) -> grpc.aio.Server:
    """The gateway's gRPC server with the inference service registered (not started).
    The repository RPCs are not proxied (UNIMPLEMENTED), as REST proxies no admin API."""
    proxy = GrpcProxy(gateway)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", gateway.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    handlers: dict[str, Handler] = {
        "ServerLive": proxy.server_live,
        "ServerReady": proxy.server_ready,
        "ServerMetadata": proxy.server_metadata,
        "ModelReady": proxy.model_ready,
        "ModelMetadata": proxy.model_metadata,
        "ModelInfer": proxy.model_infer,
    }
    methods: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(answering(handler))  # bytes in, bytes out
        for name, handler in handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    return server
