"""The runtime's admin API: OIP repository extension, desired state, drain.

Served on its own port and only when a bearer token is configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from modelfleet.api.admin import (
    ActualState,
    AdminState,
    DesiredModels,
    DeviceUsage,
    LeakedVersion,
    VersionState,
)
from modelfleet.runtime.config import ConfigError, ModelConfig, parse_document
from modelfleet.runtime.device import DeviceWorker
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.multidevice import DeviceWorkers
from modelfleet.runtime.runtime import Runtime
from modelfleet.runtime.server import RUNTIME
from modelfleet.serving.auth import bearer_auth
from modelfleet.serving.errors import BadRequest, errors_as_json

SHUTDOWN = web.AppKey("shutdown", asyncio.Event)
MiB = 1024 * 1024


def version_state(model: HostedModel) -> VersionState:
    """One hosted version as the admin state reports it."""
    return VersionState(
        name=model.config.name,
        version=model.config.version,
        state=str(model.state),
        reason=model.reason or "",
        memory_mb=round(model.memory_bytes / (1024 * 1024), 3),
        queue_depth=len(model.queue),
        inflight=model.inflight,
        queue_wait_ms=round(model.worker.expected_wait(model, model.default_level) * 1000, 3),
        served=model.served,
        errors=model.errors,
        shed=model.shed,
        objective_met=model.objective_met,
        objective_missed=model.objective_missed,
        p99_ms=model.recent.quantile_ms(0.99, time.perf_counter()),
        loaded_at=model.loaded_at,
        weights_mb=_mb(model.footprint.weights_bytes),
        peak_working_mb=_mb(model.footprint.peak_working_bytes),
        peak_working_mb_by_batch={
            rows: round(peak / MiB, 3) for rows, peak in sorted(by_batch.items())
        }
        if (by_batch := model.footprint.peak_by_batch)
        else None,
        device=str(model.worker.device) if isinstance(model.worker, DeviceWorker) else None,
    )


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MiB, 3)


def describe(model: HostedModel) -> dict[str, Any]:
    return version_state(model).model_dump(mode="json")


def actual_state(runtime: Runtime) -> dict[str, Any]:
    return held(runtime).model_dump(mode="json")


def held(runtime: Runtime) -> ActualState:
    """What the runtime holds now (the ``actual`` half of the admin state)."""
    repo = runtime.repository
    worker = runtime.worker
    # Only the thread executor measures the device's allocator (the forward process
    # of ``executor: process`` does not report it yet): None there.
    workers = device_workers(runtime)
    ledgers = [w.ledger for w in workers if w.ledger.memory.measured]
    models = list(repo.all_models())
    checks = sorted((c for ledger in ledgers for c in ledger.unloads), key=lambda c: c.at)
    return ActualState(
        ready=runtime.is_ready(),
        draining=runtime.draining,
        device=str(worker.device),
        memory_budget_mb=runtime.config.memory_budget_mb,
        memory_in_use_mb=round(repo.memory_in_use() / MiB, 3),
        models=tuple(version_state(m) for m in models),
        device_allocated_mb=_total(ledger.memory.allocated() for ledger in ledgers),
        device_reserved_mb=_total(ledger.memory.reserved() for ledger in ledgers),
        reserved_after_unload_mb=_mb(checks[-1].reserved_after_bytes) if checks else None,
        leaked=tuple(
            LeakedVersion(
                name=c.name, version=c.version, leaked_mb=round(c.leaked_bytes / MiB, 3), at=c.at
            )
            for c in checks
            if c.leaked_bytes
        ),
        devices=tuple(
            DeviceUsage(
                device=str(w.device),
                memory_in_use_mb=round(sum(m.memory_bytes for m in mine) / MiB, 3),
                allocated_mb=_mb(w.ledger.memory.allocated()),
                reserved_mb=_mb(w.ledger.memory.reserved()),
                models=tuple(f"{m.config.name}:{m.config.version}" for m in mine),
            )
            for w in workers
            for mine in ([m for m in models if m.worker is w and m.module is not None],)
        ),
    )


def device_workers(runtime: Runtime) -> list[DeviceWorker]:
    """The device workers of a runtime (one per GPU); none with ``executor: process``."""
    worker = runtime.worker
    if isinstance(worker, DeviceWorkers):
        return worker.workers
    return [worker] if isinstance(worker, DeviceWorker) else []


def _total(values: Iterable[int | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return _mb(sum(measured)) if measured else None


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


async def get_state(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    desired = tuple(m.model_dump(mode="json") for m in runtime.repository.desired)
    state = AdminState(desired=DesiredModels(models=desired), actual=held(runtime))
    return web.json_response(state.model_dump(mode="json"))


async def put_state(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = await _json(request)
    if not isinstance(body, dict):
        raise BadRequest("the desired-state document must be an object")
    try:
        document = parse_document({"models": body.get("models", [])})
    except ConfigError as exc:
        raise BadRequest(f"invalid desired state: {exc}") from None
    await runtime.repository.apply(document.models)
    return web.json_response(actual_state(runtime), status=202)


def repository_models(runtime: Runtime) -> list[dict[str, str]]:
    """The repository index (Triton's extension): every model version and its state."""
    return [
        {
            "name": m.config.name,
            "version": m.config.version,
            "state": str(m.state).upper(),
            "reason": m.reason or "",
        }
        for m in runtime.repository.all_models()
    ]


async def load_model(runtime: Runtime, name: str, config_data: object) -> list[str]:
    """Loads model ``name`` (from ``config_data``, a config object or its JSON text,
    or else from the desired state) and returns the versions loaded; ``BadRequest``
    says why not. The REST and gRPC repository APIs both call this."""
    configs: list[ModelConfig]
    if config_data is not None:
        if isinstance(config_data, str | bytes):
            try:
                config_data = json.loads(config_data)
            except json.JSONDecodeError as exc:
                raise BadRequest(f"parameters.config is not JSON: {exc}") from None
        try:
            configs = list(parse_document({"models": [config_data]}).models)
        except ConfigError as exc:
            raise BadRequest(f"invalid model config: {exc}") from None
        if configs[0].name != name:
            raise BadRequest(f"config names model '{configs[0].name}', the path '{name}'")
    else:
        configs = [m for m in runtime.repository.desired if m.name == name]
        configs += [m.config for m in runtime.repository.failed.values() if m.config.name == name]
        if not configs:
            raise BadRequest(
                f"model '{name}' is not in the desired state; pass parameters.config to load it"
            )
    results = [await runtime.repository.load_one(c) for c in configs]
    failed = [m for m in results if m.reason]
    if failed:
        raise BadRequest(f"failed to load model '{name}': {failed[0].reason}")
    return [m.config.version for m in results]


async def repository_index(request: web.Request) -> web.Response:
    return web.json_response(repository_models(request.app[RUNTIME]))


async def repository_load(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["model"]
    body = await _json(request) if request.can_read_body else {}
    config_data = ((body or {}).get("parameters") or {}).get("config")
    loaded = await load_model(runtime, name, config_data)
    return web.json_response({"name": name, "loaded": loaded})


async def repository_unload(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.match_info["model"]
    versions = await runtime.repository.unload_name(name)
    return web.json_response({"name": name, "unloaded": versions})


async def drain(request: web.Request) -> web.Response:
    request.app[SHUTDOWN].set()
    return web.json_response({"draining": True}, status=202)


def build_admin_app(runtime: Runtime, token: str, shutdown: asyncio.Event) -> web.Application:
    json_errors = errors_as_json(
        runtime.config.max_body_bytes, logging.getLogger("modelfleet.runtime")
    )
    app = web.Application(middlewares=[json_errors, bearer_auth(token)])
    app[RUNTIME] = runtime
    app[SHUTDOWN] = shutdown
    app.router.add_get("/admin/state", get_state)
    app.router.add_put("/admin/state", put_state)
    app.router.add_post("/admin/drain", drain)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", repository_load)
    app.router.add_post("/v2/repository/models/{model}/unload", repository_unload)
    return app
