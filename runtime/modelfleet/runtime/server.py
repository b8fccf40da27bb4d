"""The data-plane HTTP API: Open Inference Protocol REST and /metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelfleet.api import headers as contract
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.protocol import (
    HEADER_LENGTH,
    decode_request,
    encode_response,
    peek_parameters,
    tensor_metadata,
)
from modelfleet.runtime.runtime import Runtime
from modelfleet.serving.errors import ServingError, Unavailable, errors_as_json

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


async def infer(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    started = time.perf_counter()
    if runtime.draining:
        raise Unavailable("the server is shutting down", retry_after_s=1)
    model = _model(request)
    name, version = model.key
    metrics = model.metrics
    # Admission as early as it can decide: before the body is read when the gateway's
    # headers give the priority and timeout, else once it is read (the parameters
    # found in the raw bytes) and before its tensors are parsed. A request refused
    # here costs little, so refusing does not eat the capacity it protects.
    header = request.headers.get(PRIORITY_HEADER, "")
    timeout_header = request.headers.get(TIMEOUT_HEADER)
    timeout_us = int(timeout_header) if timeout_header and timeout_header.isdigit() else None
    level = int(header) if header.isdigit() else None
    # Without the headers only what no request could pass is refused here (the
    # expected wait is weighed once the body's parameters are known).
    refused = model.refusal(level, model.budget_s(timeout_us), wait=level is not None)
    if refused is not None:
        raise _refuse(model, refused)
    try:
        model.worker.arriving(model, +1)  # tells eager batching that more work is on its way
        try:
            body = await request.read()
            header_length = request.headers.get(HEADER_LENGTH)
            budget = model.budget_s(timeout_us)
            if level is None:
                level, timeout_param = peek_parameters(body, header_length)
                budget = model.budget_s(timeout_us, timeout_param)
                refused = model.refusal(level or 0, budget)
                if refused is not None:
                    raise refused
            decoded = decode_request(body, model.config.inputs, header_length=header_length)
        finally:
            model.worker.arriving(model, -1)
        outputs, cached = await model.infer(
            decoded, timeout_us=timeout_us, decided=(level or model.default_level, budget)
        )
        payload, headers = encode_response(
            model=name, version=version, request=decoded,
            specs=model.config.outputs, arrays=outputs,
        )  # fmt: skip
    except ServingError as exc:
        metrics.failed(exc.status)
        model.errors += 1
        if exc.status == 503:
            exc.headers[EXPECTED_WAIT_HEADER] = _expected_wait_ms(model)
        raise
    except web.HTTPRequestEntityTooLarge:
        metrics.failed(413)
        raise
    metrics.ok.inc()
    finished = time.perf_counter()
    metrics.latency.observe(finished - started)
    objective = model.config.latency_objective_ms
    if objective is not None:
        met = (finished - started) * 1000 <= objective
        metrics.objective(met)
        if met:
            model.objective_met += 1
        else:
            model.objective_missed += 1
    model.recent.record(finished, finished - started)
    if cached:
        metrics.cache_hits.inc()
    model.served += 1
    headers[QUEUE_DEPTH_HEADER] = str(len(model.queue))
    headers[EXPECTED_WAIT_HEADER] = _expected_wait_ms(model)
    return web.Response(body=payload, headers=headers)


def _refuse(model: HostedModel, error: ServingError) -> ServingError:
    model.metrics.failed(error.status)
    model.errors += 1
    error.headers[EXPECTED_WAIT_HEADER] = _expected_wait_ms(model)
    return error


def _expected_wait_ms(model: HostedModel) -> str:
    return f"{model.worker.expected_wait(model, model.default_level) * 1000:.1f}"


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
