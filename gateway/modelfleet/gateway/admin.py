"""The gateway's admin API: read and replace the routes (bearer token)."""

from __future__ import annotations

import json

from aiohttp import web

from modelfleet.gateway.proxy import GATEWAY, Gateway, log
from modelfleet.gateway.routes import RoutesError, parse_routes
from modelfleet.serving.auth import bearer_auth
from modelfleet.serving.errors import BadRequest, errors_as_json


async def get_routes(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    document = gateway.table.document
    endpoints = {
        url: {"outstanding": e.outstanding, "queue_depth": e.queue_depth,
              "ejected": e.ejected_until > 0, "failures": e.failures}
        for url, e in gateway.table.endpoints.items()
    }  # fmt: skip
    return web.json_response(
        {"models": document.model_dump(mode="json")["models"], "endpoints": endpoints}
    )


async def put_routes(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the routes document must be an object with 'models'")
    try:
        # The server settings of a running gateway stay as started.
        document = parse_routes({"models": body.get("models", {})})
    except RoutesError as exc:
        raise BadRequest(f"invalid routes: {exc}") from None
    document = document.model_copy(update={"server": gateway.config})
    gateway.replace(document)
    return web.json_response({"models": sorted(document.models)})


async def get_shadow(request: web.Request) -> web.Response:
    """What each model's shadow version has shown: requests compared, arg-max
    agreement, worst differences, failures (the operator puts it in status)."""
    shadows = request.app[GATEWAY].shadows
    return web.json_response({m: s.summary() for m, s in shadows.stats.items()})


async def get_demand(request: web.Request) -> web.Response:
    """Requests held for models scaled to zero: waiting now, held so far, the last
    one's time (the operator places a first copy where there is demand)."""
    return web.json_response(request.app[GATEWAY].cold.summary())


async def get_shed(request: web.Request) -> web.Response:
    """Infer requests this gateway refused since it started, per model and version
    (the operator adds them to the shed rate in each model's status)."""
    out: dict[str, dict[str, int]] = {}
    for (model, version), count in request.app[GATEWAY].shed_counts.items():
        out.setdefault(model, {})[version] = count
    return web.json_response(out)


def build_admin_app(gateway: Gateway, token: str) -> web.Application:
    app = web.Application(
        middlewares=[errors_as_json(gateway.config.max_body_bytes, log), bearer_auth(token)]
    )
    app[GATEWAY] = gateway
    app.router.add_get("/admin/routes", get_routes)
    app.router.add_put("/admin/routes", put_routes)
    app.router.add_get("/admin/shadow", get_shadow)
    app.router.add_get("/admin/demand", get_demand)
    app.router.add_get("/admin/shed", get_shed)
    return app
