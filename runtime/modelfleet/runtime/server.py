"""The data-plane HTTP API: Open Inference Protocol REST and /metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelfleet.api import headers as contract
from modelfleet.api.request_parameters import HEADER_LENGTH, peek_parameters
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.infer import Arrival, Infer, expected_wait_ms
from modelfleet.runtime.protocol import (
    Array,
    InferRequest,
    decode_request,
    encode_response,
    tensor_metadata,
)
from modelfleet.runtime.runtime import Runtime
from modelfleet.serving.errors import (
    PayloadTooLarge,
    ServingError,
    Unavailable,
    errors_as_json,
)
from modelfleet.serving.front_door import Door, Head

log = logging.getLogger("modelfleet.runtime")
RUNTIME = web.AppKey("runtime", Runtime)
QUEUE_DEPTH_HEADER = contract.QUEUE_DEPTH
TIMEOUT_HEADER = contract.TIMEOUT_US
PRIORITY_HEADER = contract.PRIORITY
EXPECTED_WAIT_HEADER = contract.EXPECTED_WAIT_MS
"""On every infer answer: the queue wait a default-priority request for the model
can expect now (the gateway holds requests back that could not make it)."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def live(request: web.Request) -> web.Response:
    failure = _runtime(request).forward_process_failure()
    if failure is not None:  # nothing can be served until the pod restarts
        return web.json_response({"live": False, "reason": failure}, status=503)
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    ok = _runtime(request).is_ready()
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "name": "modelfleet",
            "version": Runtime.VERSION,
            "extensions": ["model_repository", "binary_tensor_data"],
        }
    )


def _model(request: web.Request, *, ready_only: bool = False) -> HostedModel:
    name = request.match_info["model"]
    version = request.match_info.get("version")
    return _runtime(request).repository.resolve(name, version)


async def model_metadata(request: web.Request) -> web.Response:
    model = _model(request)
    config = model.config
    return web.json_response(
        {
            "name": config.name,
            "versions": _runtime(request).repository.versions_of(config.name),
            "platform": f"pytorch_{config.resolved_format}",
            "inputs": tensor_metadata(config.inputs),
            "outputs": tensor_metadata(config.outputs),
        }
    )


async def model_ready(request: web.Request) -> web.Response:
    model = _model(request)
    ok = model.state is State.READY and not _runtime(request).draining
    return web.json_response(
        {"name": model.config.name, "version": model.config.version, "ready": ok},
        status=200 if ok else 503,
    )


class RestWire:
    """OIP REST: a JSON head, optionally followed by binary tensors."""

    protocol = "rest"

    def __init__(self, header_length: str | None) -> None:
        self.header_length = header_length

    def peek(self, body: bytes) -> tuple[int | None, int | None]:
        return peek_parameters(body, self.header_length)

    def decode(self, body: bytes, model: HostedModel) -> InferRequest:
        return decode_request(body, model.config.inputs, header_length=self.header_length)

    def encode(
        self, model: HostedModel, request: InferRequest, outputs: list[Array]
    ) -> tuple[bytes, dict[str, str]]:
        name, version = model.key
        return encode_response(
            model=name, version=version, request=request,
            specs=model.config.outputs, arrays=outputs,
        )  # fmt: skip


def _arrival(priority: str, timeout_us: str | None) -> Arrival:
    """The gateway's (or a client's) priority and timeout headers."""
    return Arrival(
        level=int(priority) if priority.isdigit() else None,
        timeout_us=int(timeout_us) if timeout_us and timeout_us.isdigit() else None,
    )


class RuntimeDoor:
    """The front door's admission: the handler's own (``Infer.refusal``), for a
    request of a ready model; anything else is the handler's to answer."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _model(self, head: Head) -> HostedModel | None:
        if self.runtime.draining:
            return None
        try:
            model = self.runtime.repository.resolve(head.model, head.version)
        except ServingError:
            return None
        return model if model.state is State.READY else None

    def lets_in(self, head: Head) -> bool:
        model = self._model(head)
        if model is None:
            return True
        arrival = _arrival(head.priority, head.timeout_us)
        level = arrival.level or model.default_level
        if model.worker.would_refuse(model, level, model.inbound.count()):
            return False  # full for it: the body decides (it may name a higher level)
        if model.wait_ahead(level, model.budget_s(arrival.timeout_us))[1]:
            return False  # too late at its level: the same (a higher one may wait less)
        model.inbound.add()
        return True

    def refusal(self, head: Head, body: bytes) -> ServingError | None:
        model = self._model(head)
        if model is None:
            return None
        arrival = _arrival(head.priority, head.timeout_us)
        return Infer(model, arrival, RestWire(head.header_length)).refusal(body)


def door(runtime: Runtime) -> Door:
    """The front door of ``runtime``'s data port."""
    return RuntimeDoor(runtime)


async def infer(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    if runtime.draining:
        raise Unavailable("the server is shutting down", retry_after_s=1)
    model = _model(request)
    # Admission as early as it can decide: before the body is read when the gateway's
    # headers give the priority and timeout, else once it is read (the parameters
    # found in the raw bytes) and before its tensors are parsed. A request refused
    # here costs little, so refusing does not eat the capacity it protects.
    arrival = _arrival(
        request.headers.get(PRIORITY_HEADER, ""), request.headers.get(TIMEOUT_HEADER)
    )
    serve = Infer(model, arrival, RestWire(request.headers.get(HEADER_LENGTH)))
    model.inbound.claim()  # this request's place, if the front door let it in
    serve.admit_early()

    async def read() -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = runtime.config.max_body_bytes
            raise PayloadTooLarge(
                f"request body is larger than the limit of {limit} bytes"
            ) from None

    payload, headers = await serve.run(read)
    headers[QUEUE_DEPTH_HEADER] = str(len(model.queue))
    headers[EXPECTED_WAIT_HEADER] = expected_wait_ms(model)
    return web.Response(body=payload, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    for model in runtime.repository.models.values():
        runtime.metrics.queue_depth.labels(*model.key).set(len(model.queue))
    return web.Response(
        body=generate_latest(runtime.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def build_data_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[errors_as_json(runtime.config.max_body_bytes, log)],
        client_max_size=runtime.config.max_body_bytes,
    )
    app[RUNTIME] = runtime
    base = "/v2/models/{model}"
    versioned = base + "/versions/{version}"
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/metrics", metrics)
    for prefix in (base, versioned):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    return app
