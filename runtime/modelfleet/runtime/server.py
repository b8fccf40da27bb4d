"""The data-plane HTTP API: Open Inference Protocol REST and /metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelfleet.runtime.errors import ServingError, Unavailable, errors_as_json
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.protocol import (
    HEADER_LENGTH,
    decode_request,
    encode_response,
    tensor_metadata,
)
from modelfleet.runtime.runtime import Runtime

log = logging.getLogger("modelfleet.runtime")
RUNTIME = web.AppKey("runtime", Runtime)
QUEUE_DEPTH_HEADER = "X-ModelFleet-Queue-Depth"
TIMEOUT_HEADER = "X-ModelFleet-Timeout-Us"
PRIORITY_HEADER = "X-ModelFleet-Priority"
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


async def infer(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    started = time.perf_counter()
    if runtime.draining:
        raise Unavailable("the server is shutting down", retry_after_s=1)
    model = _model(request)
    name, version = model.key
    metrics = model.metrics
    priority = request.headers.get(PRIORITY_HEADER, "")
    if model.refuses(int(priority) if priority.isdigit() else None):
        metrics.failed(503)
        model.errors += 1
        raise model.queue.full_error()
    try:
        model.worker.arriving(model, +1)  # tells eager batching that more work is on its way
        try:
            body = await request.read()
            decoded = decode_request(
                body, model.config.inputs, header_length=request.headers.get(HEADER_LENGTH)
            )
        finally:
            model.worker.arriving(model, -1)
        timeout_header = request.headers.get(TIMEOUT_HEADER)
        outputs, cached = await model.infer(
            decoded, timeout_us=int(timeout_header) if timeout_header else None
        )
        payload, headers = encode_response(
            model=name, version=version, request=decoded,
            specs=model.config.outputs, arrays=outputs,
        )  # fmt: skip
    except ServingError as exc:
        metrics.failed(exc.status)
        model.errors += 1
        raise
    except web.HTTPRequestEntityTooLarge:
        metrics.failed(413)
        raise
    metrics.ok.inc()
    finished = time.perf_counter()
    metrics.latency.observe(finished - started)
    model.recent.record(finished, finished - started)
    if cached:
        metrics.cache_hits.inc()
    model.served += 1
    headers[QUEUE_DEPTH_HEADER] = str(len(model.queue))
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
