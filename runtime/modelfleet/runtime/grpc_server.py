"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``).

Served on its own port (``server.grpc_port``) beside REST, with REST's semantics:
inference goes through the same admission, queue, batcher, cache, rate limit and
metrics (:mod:`modelfleet.runtime.infer`, ``protocol="grpc"``); the request's
priority comes from the gateway's ``x-modelfleet-priority`` metadata or the
request's ``priority`` parameter, and its deadline is the earliest of the client's
gRPC deadline, the ``timeout`` parameter and the model's queue timeout. Errors
leave with the status code a gRPC client expects (``serving.grpc_status``). The
repository RPCs need the admin token as ``authorization: Bearer <token>``
metadata, like the admin REST API, and are refused when it is off.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from modelfleet.api import headers
from modelfleet.api import inference_pb2 as pb
from modelfleet.runtime.admin import load_model, repository_models
from modelfleet.runtime.grpc_protocol import (
    decode_request,
    encode_response,
    parse_request,
    peek_parameters,
)
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.infer import Arrival, Infer, expected_wait_ms
from modelfleet.runtime.protocol import Array, InferRequest, tensor_metadata
from modelfleet.runtime.runtime import Runtime
from modelfleet.serving.errors import BadRequest, ServingError, Unauthorized, Unavailable
from modelfleet.serving.grpc_status import grpc_code, trailing_metadata

log = logging.getLogger("modelfleet.runtime")
SERVICE = "inference.GRPCInferenceService"
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class GrpcWire:
    """OIP gRPC as a :class:`~modelfleet.runtime.infer.Wire`."""

    protocol = "grpc"

    def peek(self, body: pb.ModelInferRequest) -> tuple[int | None, int | None]:
        return peek_parameters(body)

    def decode(self, body: pb.ModelInferRequest, model: HostedModel) -> InferRequest:
        return decode_request(body, model.config.inputs)

    def encode(
        self, model: HostedModel, request: InferRequest, outputs: list[Array]
    ) -> pb.ModelInferResponse:
        name, version = model.key
        return encode_response(
            model=name, version=version, request=request,
            specs=model.config.outputs, arrays=outputs,
        )  # fmt: skip


WIRE = GrpcWire()


def _metadata_int(context: Context, key: str) -> int | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def arrival(context: Context) -> Arrival:
    """Priority and deadline known before the request is parsed: the gateway's
    metadata, and the client's gRPC deadline (which can only shorten the timeout)."""
    timeout_us = _metadata_int(context, headers.TIMEOUT_US.lower())
    remaining = context.time_remaining()
    if remaining is not None:
        deadline_us = max(1, int(remaining * 1e6))
        timeout_us = deadline_us if timeout_us is None else min(timeout_us, deadline_us)
    return Arrival(level=_metadata_int(context, headers.PRIORITY.lower()), timeout_us=timeout_us)


class GrpcApi:
    """The RPCs; each raises :class:`ServingError` and ``answering`` maps it."""

    def __init__(self, runtime: Runtime, admin_token: str | None) -> None:
        self.runtime = runtime
        self._bearer = f"Bearer {admin_token}".encode() if admin_token else None

    async def server_live(self, _: pb.ServerLiveRequest, __: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.runtime.forward_process_failure() is None)

    async def server_ready(self, _: pb.ServerReadyRequest, __: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.runtime.is_ready())

    async def server_metadata(
        self, _: pb.ServerMetadataRequest, __: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="modelfleet", version=Runtime.VERSION, extensions=["model_repository"]
        )

    def _model(self, name: str, version: str) -> HostedModel:
        if not name:
            raise BadRequest("the request names no model ('name' / 'model_name' is empty)")
        return self.runtime.repository.resolve(name, version or None)

    async def model_ready(self, request: pb.ModelReadyRequest, _: Context) -> pb.ModelReadyResponse:
        model = self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=model.state is State.READY and not self.runtime.draining)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, _: Context
    ) -> pb.ModelMetadataResponse:
        config = self._model(request.name, request.version).config
        return pb.ModelMetadataResponse(
            name=config.name,
            versions=self.runtime.repository.versions_of(config.name),
            platform=f"pytorch_{config.resolved_format}",
            inputs=tensor_metadata(config.inputs),
            outputs=tensor_metadata(config.outputs),
        )

    async def model_infer(self, body: bytes, context: Context) -> pb.ModelInferResponse:
        runtime = self.runtime
        if runtime.draining:
            raise Unavailable("the server is shutting down", retry_after_s=1)
        message = parse_request(body)
        model = self._model(message.model_name, message.model_version)
        serve = Infer(model, arrival(context), WIRE)
        serve.admit_early()

        async def read() -> pb.ModelInferRequest:
            return message

        response = await serve.run(read)
        context.set_trailing_metadata(
            (
                (headers.QUEUE_DEPTH.lower(), str(len(model.queue))),
                (headers.EXPECTED_WAIT_MS.lower(), expected_wait_ms(model)),
            )
        )
        return response

    def _authorize(self, context: Context) -> None:
        if self._bearer is None:
            raise Unauthorized("the repository API is off: the runtime has no admin token")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else given
        if not hmac.compare_digest(given_bytes, self._bearer):
            raise Unauthorized("missing or wrong bearer token for the repository API")

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        self._authorize(context)
        models = repository_models(self.runtime)
        if request.ready:
            models = [m for m in models if m["state"] == "READY"]
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models]
        )

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        self._authorize(context)
        config: object = None
        if "config" in request.parameters:
            parameter = request.parameters["config"]
            which = parameter.WhichOneof("parameter_choice")
            config = getattr(parameter, which) if which else None
        await load_model(self.runtime, request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        self._authorize(context)
        await self.runtime.repository.unload_name(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def answering(
    handler: Callable[[Req, Context], Awaitable[Resp]],
) -> Callable[[Req, Context], Awaitable[Resp]]:
    """Turns a :class:`ServingError` into its gRPC status (and its headers into
    trailing metadata); anything unexpected is logged and answered INTERNAL."""

    async def rpc(request: Req, context: Context) -> Resp:
        try:
            return await handler(request, context)
        except ServingError as exc:
            error = exc
        except Exception:
            log.exception("unexpected error in gRPC %s", getattr(handler, "__name__", "?"))
            error = ServingError("internal server error")
        await context.abort(grpc_code(error), error.message, trailing_metadata(error))
        raise AssertionError("unreachable: abort raises")

    return rpc


def _unary(
    handler: Callable[[Any, Context], Awaitable[Message]],
    request_type: type[Message] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        answering(handler),
        request_deserializer=request_type.FromString if request_type is not None else None,
        response_serializer=lambda message: message.SerializeToString(),
    )


def build_grpc_server(runtime: Runtime, admin_token: str | None) -> grpc.aio.Server:
    """The gRPC server with the inference service registered (not started)."""
    api = GrpcApi(runtime, admin_token)
    limit = runtime.config.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    methods = {
        "ServerLive": _unary(api.server_live, pb.ServerLiveRequest),
        "ServerReady": _unary(api.server_ready, pb.ServerReadyRequest),
        "ServerMetadata": _unary(api.server_metadata, pb.ServerMetadataRequest),
        "ModelReady": _unary(api.model_ready, pb.ModelReadyRequest),
        "ModelMetadata": _unary(api.model_metadata, pb.ModelMetadataRequest),
        # Bytes in: the handler parses them, so a malformed message is a 400-like
        # INVALID_ARGUMENT with the parser's words rather than an opaque INTERNAL.
        "ModelInfer": _unary(api.model_infer, None),
        "RepositoryIndex": _unary(api.repository_index, pb.RepositoryIndexRequest),
        "RepositoryModelLoad": _unary(api.repository_model_load, pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": _unary(
            api.repository_model_unload, pb.RepositoryModelUnloadRequest
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    return server
