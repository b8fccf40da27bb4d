"""The gateway's data plane: OIP paths proxied to the chosen version and endpoint."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelfleet.api import headers as contract
from modelfleet.api.request_parameters import HEADER_LENGTH, peek_parameters
from modelfleet.gateway.admission import Admission
from modelfleet.gateway.balancer import Endpoint, least_wait, open_to, pick
from modelfleet.gateway.cold import ColdStart
from modelfleet.gateway.metrics import GatewayMetrics
from modelfleet.gateway.routes import ModelRoute, RoutesDocument, VersionRoute
from modelfleet.gateway.shadow import SHADOW_LEVEL, Outputs, Shadows, rest_outputs
from modelfleet.gateway.split import Spread, choose_version
from modelfleet.gateway.upstream import GrpcChannels, UpstreamError, UpstreamResponse, Upstreams
from modelfleet.serving.errors import (
    BadGateway,
    GatewayTimeout,
    NotFound,
    ServingError,
    Unavailable,
    errors_as_json,
)
from modelfleet.version import VERSION

log = logging.getLogger("modelfleet.gateway")
SESSION_HEADER = contract.SESSION
VERSION_HEADER = contract.VERSION
PRIORITY_HEADER = contract.PRIORITY
TIMEOUT_HEADER = contract.TIMEOUT_US
QUEUE_DEPTH_HEADER = contract.QUEUE_DEPTH.lower()  # read from a dict of lower-cased names
EXPECTED_WAIT_HEADER = contract.EXPECTED_WAIT_MS.lower()
DEFAULT_LEVEL = 5
"""Priority level of a request that names none (or 0, Triton's 'the default')."""
_PASSED_HEADERS = ("Content-Type", HEADER_LENGTH, PRIORITY_HEADER)
_RETURNED_HEADERS = {
    "content-type": "Content-Type",
    "inference-header-content-length": "Inference-Header-Content-Length",
    "retry-after": "Retry-After",
}


@dataclass
class Table:
    """The routes in force, with the live state that must survive a replacement."""

    document: RoutesDocument
    endpoints: dict[str, Endpoint]
    admission: dict[str, Admission]
    top: dict[str, int] = field(default_factory=dict)
    """Per endpoint: the highest priority among the models routed to it (the
    hold-back keeps headroom there for it)."""


class Gateway:
    def __init__(self, document: RoutesDocument, *, seed: int | None = None) -> None:
        self.config = document.server
        self.metrics = GatewayMetrics()
        self.rng = random.Random(seed)
        self.spreads: dict[str, Spread] = {}  # per model, kept across route replacements
        self.table = Table(document, {}, {})
        self.upstreams = Upstreams(self.config.connect_timeout_s)
        self.channels = GrpcChannels(self.config.connect_timeout_s)
        self.shadows = Shadows(self.metrics)
        self.cold = ColdStart(self.metrics)
        self.shed_counts: dict[tuple[str, str], int] = {}
        """Infer requests this gateway refused, per (model, version) since it started
        (``GET /admin/shed``: the operator adds them to the models' shed rate)."""
        self.replace(document)
        self.draining = False

    def replace(self, document: RoutesDocument) -> None:
        """Swaps the routes in one step; endpoint health and in-flight counts carry over,
        so requests already under way finish where they are and nothing is dropped."""
        old = self.table
        endpoints = {
            url: old.endpoints.get(url) or Endpoint(url)
            for route in document.models.values()
            for version in route.versions
            for url in version.endpoints
        }
        admission = {}
        for name, route in document.models.items():
            gate = old.admission.get(name)
            if gate is None:
                gate = Admission(name, route.max_concurrency, route.max_waiting, DEFAULT_LEVEL)
            else:
                gate.resize(route.max_concurrency, route.max_waiting)
            admission[name] = gate
        top: dict[str, int] = {}
        for route in document.models.values():
            for version in route.versions:
                for url in version.endpoints:
                    top[url] = max(top.get(url, route.priority), route.priority)
        self.table = Table(document, endpoints, admission, top)
        self.cold.routes_changed(document)
        self.spreads = {m: s for m, s in self.spreads.items() if m in document.models}
        for url in old.endpoints.keys() - endpoints.keys():
            self.upstreams.forget(url)
        for target in _grpc_targets(old.document) - _grpc_targets(document):
            self.channels.forget(target)  # calls under way on it may finish
        log.info(
            "routes replaced: %d model(s), %d endpoint(s)", len(document.models), len(endpoints)
        )

    async def close(self) -> None:
        await self.shadows.close()
        self.upstreams.close()
        await self.channels.close()

    def shadow_of(self, route: ModelRoute, answered: VersionRoute) -> VersionRoute | None:
        """The shadow version to mirror this answered request to, if the draw says so
        (never a request the shadow version itself answered)."""
        shadow = route.shadow
        if shadow is None or shadow.version == answered.version:
            return None
        if self.rng.random() * 100 >= shadow.percent:
            return None
        return next((v for v in route.versions if v.version == shadow.version), None)

    async def shadow_rest(
        self, model: str, route: ModelRoute, shadow: VersionRoute, headers: dict[str, str],
        body: bytes | None,
    ) -> Outputs:  # fmt: skip
        """Sends a mirrored request to the shadow version; its outputs."""
        endpoints = self._ready_endpoints(model, shadow)
        endpoint = pick(endpoints, time.monotonic(), self.rng, set())
        if endpoint is None:
            raise Unavailable(f"shadow version '{shadow.version}' has no endpoint")
        headers = {**headers, PRIORITY_HEADER: str(SHADOW_LEVEL)}
        path = f"/v2/models/{model}/versions/{shadow.version}/infer"
        async with asyncio.timeout(route.timeout_ms / 1000):
            answer = await self.upstreams.request(endpoint.url, "POST", path, headers, body)
        if answer.status != 200:
            raise Unavailable(f"shadow answered {answer.status}")
        return rest_outputs(answer.body, answer.headers.get("inference-header-content-length"))

    # -- choosing ------------------------------------------------------------------

    def route(self, model: str) -> ModelRoute:
        route = self.table.document.models.get(model)
        if route is None:
            raise NotFound(f"unknown model '{model}'")
        return route

    def version(self, model: str, route: ModelRoute, request: web.Request) -> VersionRoute:
        forced = request.match_info.get("version") or request.headers.get(VERSION_HEADER)
        return self.choose(model, route, forced, request.headers.get(SESSION_HEADER))

    def choose(
        self, model: str, route: ModelRoute, forced: str | None, session: str | None
    ) -> VersionRoute:
        """The version a request goes to, REST and gRPC alike: the ``forced`` one (from
        the path, the request or ``X-ModelFleet-Version``), else the traffic split,
        sticky by ``session`` (``X-ModelFleet-Session``) when there is one."""
        if forced is not None:
            for v in route.versions:
                if v.version == forced:
                    return v
            known = ", ".join(v.version for v in route.versions)
            raise NotFound(f"model '{model}' has no version '{forced}'; known: {known}")
        spread = self.spreads.get(model)
        if spread is None:
            spread = self.spreads[model] = Spread(self.rng.random())
        chosen = choose_version(route.versions, session, spread)
        if chosen is None:
            raise Unavailable(
                f"model '{model}' has no version with traffic weight", retry_after_s=1
            )
        return chosen

    # -- proxying ------------------------------------------------------------------

    async def forward(self, request: web.Request, suffix: str, *, admit: bool) -> web.Response:
        started = time.perf_counter()
        model = request.match_info["model"]
        route = self.route(model)
        deadline = time.monotonic() + route.timeout_ms / 1000
        if admit:  # scaled to zero: held until a copy is ready (or the deadline)
            client_deadline = _client_deadline(request, deadline, time.monotonic())
            route = await self.cold.copy_for(model, route, client_deadline, self.route)
        version = self.version(model, route, request)
        body = await request.read() if request.can_read_body else None
        gate = self.table.admission[model]
        outcome, endpoint = "error", ""
        try:
            level = _level(request, body)
            try:
                await self.admit(
                    model, route, version, level,
                    _client_deadline(request, deadline, time.monotonic()), gate if admit else None,
                )  # fmt: skip
            except Unavailable:
                outcome = "shed"
                raise
            in_flight = self.metrics.in_flight_of(model)
            in_flight.inc()
            try:
                endpoint, response = await self._attempts(
                    request, model, version, suffix, body, deadline, level
                )
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
            outcome = str(response.status)
            shadow = self.shadow_of(route, version) if admit and response.status == 200 else None
            if shadow is not None:
                raw = bytes(response.body) if isinstance(response.body, bytes) else b""
                length = response.headers.get("Inference-Header-Content-Length")
                self.shadows.mirror(
                    model, shadow.version, lambda: rest_outputs(raw, length),
                    lambda: self.shadow_rest(
                        model, route, shadow, _upstream_headers(request, level), body
                    ),
                )  # fmt: skip
            return response
        finally:
            self.metrics.answered(
                model, version.version, endpoint, outcome, time.perf_counter() - started, "rest"
            )

    async def admit(
        self,
        model: str,
        route: ModelRoute,
        version: VersionRoute,
        level: int,
        deadline: float,
        gate: Admission | None,
    ) -> None:
        """Lets a request in, or sheds it (``Unavailable``, counted): the hold-back,
        then the model's admission gate (``gate``; None for metadata and readiness,
        which take no slot). The caller releases the gate once the request is done.
        The hold-back judges by the wait the runtimes report for the model's default
        level, so a request of a higher level (Triton's ``priority``), which goes
        before that queue there, skips it."""
        if level >= DEFAULT_LEVEL:
            self.hold_back(model, route, version, level, deadline)
        if gate is not None:
            try:
                await gate.acquire(level, route.timeout_ms / 1000)
            except Unavailable as exc:
                self.count_shed(model, version.version, level, exc.reason)
                raise

    def count_shed(self, model: str, version: str, level: int, reason: str) -> None:
        self.metrics.shed.labels(model, str(level), reason).inc()
        key = (model, version)
        self.shed_counts[key] = self.shed_counts.get(key, 0) + 1

    def hold_back(
        self, model: str, route: ModelRoute, version: VersionRoute, level: int, deadline: float
    ) -> None:
        """Raises the hold-back's refusal (``held_back``), counted, if there is one."""
        refused = self.held_back(model, route, version, deadline)
        if refused is not None:
            self.count_shed(model, version.version, level, refused.reason)
            raise refused

    def held_back(
        self, model: str, route: ModelRoute, version: VersionRoute, deadline: float
    ) -> Unavailable | None:
        """Refuses at once, by what the runtimes last reported, a request that no
        endpoint of the version could start within its ``deadline`` (the earlier of
        the gateway's and the client's), or that only endpoints whose backlog for the
        model exceeds the headroom kept for their higher-priority models could take
        (``holdback_wait_ms``): the client is told now rather than after a round trip,
        and the runtimes keep their CPU and connections for what they can serve.
        Counts nothing (the front door asks too)."""
        now = time.monotonic()
        table = self.table
        endpoints = [table.endpoints[u] for u in version.endpoints if u in table.endpoints]
        if not endpoints:
            return None
        fresh, left = self.config.wait_report_s, deadline - now
        holdback_ms = self.config.holdback_wait_ms
        headroom = {e.url: holdback_ms / 1000 for e in endpoints if holdback_ms is not None
                    and table.top.get(e.url, route.priority) > route.priority}  # fmt: skip
        for reason, limits in (("deadline", {}), ("holdback", headroom)):
            if reason == "holdback" and not headroom:
                return None
            if open_to(endpoints, model, now, fresh, left, limits):
                continue
            wait = least_wait(endpoints, model, now, fresh)
            why = (
                f"version '{version.version}': every endpoint expects {wait * 1000:.0f} ms "
                f"of queue wait, more than the {max(0.0, left) * 1000:.0f} ms left to this "
                "request's deadline"
                if reason == "deadline"
                else f"(priority {route.priority}) is held back: its runtimes expect "
                f"{wait * 1000:.0f} ms of queue wait for it, more than the "
                f"{holdback_ms:g} ms of headroom kept there for higher-priority models"
            )
            return Unavailable(
                f"model '{model}' {why}", retry_after_s=max(1.0, wait), reason=reason
            )
        return None

    async def _attempts(
        self,
        request: web.Request,
        model: str,
        version: VersionRoute,
        suffix: str,
        body: bytes | None,
        deadline: float,
        level: int = DEFAULT_LEVEL,
    ) -> tuple[str, web.Response]:
        """Sends the request to an endpoint of the version, and to another one when the
        connection fails (infer is idempotent) or, once, when the runtime answers 503."""
        endpoints = self._ready_endpoints(model, version)
        headers = _upstream_headers(request, level)
        deadline = _client_deadline(request, deadline, time.monotonic())
        path = f"/v2/models/{model}/versions/{version.version}{suffix}"
        last_error: ServingError = BadGateway(f"no endpoint of model '{model}' could be reached")
        tried: set[str] = set()
        busy_retried = False
        for _ in range(min(self.config.max_attempts, len(endpoints))):
            endpoint = pick(endpoints, time.monotonic(), self.rng, tried)
            if endpoint is None:
                break
            tried.add(endpoint.url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            headers[TIMEOUT_HEADER] = str(int(remaining * 1e6))
            endpoint.outstanding += 1
            try:
                async with asyncio.timeout(remaining):
                    answer = await self.upstreams.request(
                        endpoint.url, request.method, path, headers, body
                    )
            except UpstreamError as exc:
                last_error = self.unreachable(endpoint, model, version, exc)
                continue
            except TimeoutError:
                raise GatewayTimeout(
                    f"model '{model}' version '{version.version}' did not answer within "
                    f"{remaining * 1000:.0f} ms at {endpoint.url}"
                ) from None
            finally:
                endpoint.outstanding -= 1
            endpoint.succeeded()
            note_report(endpoint, model, answer.headers)
            if answer.status == 503 and not busy_retried and len(tried) < len(endpoints):
                busy_retried = True  # full or draining there: another pod may have room
                self.metrics.retries.labels(model, endpoint.url, "busy").inc()
                last_error = Unavailable(f"endpoint {endpoint.url} is busy", retry_after_s=1)
                continue
            return endpoint.url, _client_response(answer)
        if time.monotonic() >= deadline:
            raise GatewayTimeout(f"model '{model}' did not answer within its deadline")
        raise last_error

    def _ready_endpoints(self, model: str, version: VersionRoute) -> list[Endpoint]:
        """The version's endpoints; 503 when it has none."""
        endpoints = [
            self.table.endpoints[u] for u in version.endpoints if u in self.table.endpoints
        ]
        if not endpoints:
            raise Unavailable(
                f"model '{model}' version '{version.version}' has no ready endpoint",
                retry_after_s=1,
            )
        return endpoints

    def unreachable(
        self,
        endpoint: Endpoint,
        model: str,
        version: VersionRoute,
        exc: Exception,
        grpc_target: str | None = None,
    ) -> BadGateway:
        """A connection to ``endpoint`` failed: it is ejected for a while (for REST and
        gRPC alike), its pooled connections dropped (or, for a failure at its gRPC
        ``grpc_target``, its channel); the error the client gets if no other endpoint
        answers."""
        endpoint.eject(time.monotonic(), self.config.eject_s)
        if grpc_target is None:
            self.upstreams.forget(endpoint.url)
        else:
            self.channels.forget(grpc_target)
        self.metrics.retries.labels(model, endpoint.url, "unreachable").inc()
        where = grpc_target or endpoint.url
        log.warning(
            "endpoint %s failed for model '%s' version '%s' (%s); trying another",
            where, model, version.version, exc,
        )  # fmt: skip
        return BadGateway(f"endpoint {where} of model '{model}' failed: {exc}")


def _grpc_targets(document: RoutesDocument) -> set[str]:
    return {
        target
        for route in document.models.values()
        for version in route.versions
        for target in version.grpc_endpoints
    }


def _upstream_headers(request: web.Request, level: int) -> dict[str, str]:
    """The client's headers that the runtime needs, and the priority level when it
    is not the default (the runtime then decides before it reads the body)."""
    headers = {k: request.headers[k] for k in _PASSED_HEADERS if k in request.headers}
    if level != DEFAULT_LEVEL:
        headers[PRIORITY_HEADER] = str(level)
    return headers


def _client_deadline(request: web.Request, deadline: float, now: float) -> float:
    """The gateway's deadline, or the client's ``X-ModelFleet-Timeout-Us`` when sooner."""
    asked_us = request.headers.get(TIMEOUT_HEADER, "")
    if asked_us.isdigit():
        return min(deadline, now + int(asked_us) / 1e6)
    return deadline


def _client_response(answer: UpstreamResponse) -> web.Response:
    """The runtime's answer as the client gets it: body, status and the headers it keeps."""
    returned = {
        name: answer.headers[key]
        for key, name in _RETURNED_HEADERS.items()
        if key in answer.headers
    }
    return web.Response(body=answer.body, status=answer.status, headers=returned)


def note_report(endpoint: Endpoint, model: str, headers: dict[str, str]) -> None:
    """Records the queue depth and the expected wait for ``model`` that the runtime
    reported on an answer for it."""
    depth = headers.get(QUEUE_DEPTH_HEADER)
    if depth is not None and depth.isdigit():
        endpoint.queue_depth = int(depth)
    reported = headers.get(EXPECTED_WAIT_HEADER)
    if reported is None:
        return
    try:
        wait_s = float(reported) / 1000
    except ValueError:
        return
    endpoint.report(model, wait_s, time.monotonic())


def _level(request: web.Request, body: bytes | None) -> int:
    """The request's priority level: the header, else Triton's body parameter."""
    header = request.headers.get(PRIORITY_HEADER)
    value = None
    if header is not None and header.isdigit():
        value = int(header)
    elif body:  # where the runtime looks too: tritonclient writes it after the tensors
        value, _ = peek_parameters(body, request.headers.get(HEADER_LENGTH))
    return value or DEFAULT_LEVEL


GATEWAY = web.AppKey("gateway", Gateway)


async def infer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.draining:
        raise Unavailable("the gateway is shutting down", retry_after_s=1)
    return await gateway.forward(request, "/infer", admit=True)


async def model_ready(request: web.Request) -> web.Response:
    return await request.app[GATEWAY].forward(request, "/ready", admit=False)


async def model_metadata(request: web.Request) -> web.Response:
    return await request.app[GATEWAY].forward(request, "", admit=False)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    ok = not gateway.draining
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "modelfleet-gateway", "version": VERSION, "extensions": []})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[GATEWAY].metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def build_gateway_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[errors_as_json(gateway.config.max_body_bytes, log)],
        client_max_size=gateway.config.max_body_bytes,
    )
    app[GATEWAY] = gateway
    base = "/v2/models/{model}"
    for prefix in (base, base + "/versions/{version}"):
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix, model_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/metrics", metrics)
    return app
