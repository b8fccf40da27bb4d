"""The gateway's routes document: model -> versions with weights -> endpoints.

The operator writes it (the routes ConfigMap, ``PUT /admin/routes``) and checks what
it writes against these models; the gateway reads it with them
(``modelfleet.gateway.routes``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionRoute(_Strict):
    version: str = Field(min_length=1)
    """Version label, as the runtimes serve it under ``/versions/{v}``."""
    weight: float = Field(default=100, ge=0)
    """Relative share of the model's traffic; 0 means only when forced by header or path."""
    endpoints: tuple[str, ...] = ()
    """Base URLs of runtime pods where this version is loaded and ready."""

    grpc_endpoints: tuple[str, ...] = ()
    """``host:port`` of the same pods' gRPC APIs, in the order of ``endpoints``
    (empty: the version takes no gRPC traffic)."""

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return tuple(url.rstrip("/") for url in endpoints)

    @field_validator("grpc_endpoints")
    @classmethod
    def _targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        for target in targets:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit() or "/" in target:
                raise ValueError(f"gRPC endpoint {target!r} must be host:port")
        return targets

    @model_validator(mode="after")
    def _paired(self) -> VersionRoute:
        if self.grpc_endpoints and len(self.grpc_endpoints) != len(self.endpoints):
            raise ValueError(
                f"version {self.version!r} has {len(self.grpc_endpoints)} gRPC endpoints for "
                f"{len(self.endpoints)} endpoints: give one per endpoint, in the same order"
            )
        return self


class ShadowRoute(_Strict):
    version: str = Field(min_length=1)
    """The version that gets the mirrored requests (listed in the model's
    ``versions``, usually with weight 0 so that no client is answered by it)."""
    percent: float = Field(gt=0, le=100)
    """Share of the model's answered infer requests mirrored to it."""


class ModelRoute(_Strict):
    priority: int = 0
    """Model priority (Kubernetes meaning): informs shedding between models."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests in flight to the runtimes for this model; more wait or are shed."""
    max_waiting: int = Field(default=128, ge=0)
    """Requests waiting for a slot; past it the lowest priority is shed (503)."""
    timeout_ms: float = Field(default=30_000, gt=0)
    """The gateway's deadline for one request; the runtime gets what remains."""
    versions: tuple[VersionRoute, ...] = Field(min_length=1)
    shadow: ShadowRoute | None = None
    """Mirror a share of the answered requests to this version and compare its
    answers with the primary's (never returned to a client); off when unset."""
    cold: bool = False
    """The model is scaled to zero: while no version has an endpoint, its requests
    wait at the gateway (at most ``max_waiting``, each until its deadline) for
    routes that give it one, instead of a 503 at once."""

    @model_validator(mode="after")
    def _unique(self) -> ModelRoute:
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"versions listed twice: {names}")
        if self.shadow is not None and self.shadow.version not in names:
            raise ValueError(
                f"shadow version {self.shadow.version!r} is not among the versions {names}"
            )
        return self


class GatewayServer(_Strict):
    host: str = "127.0.0.1"
    """Address the data and admin ports bind to."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Data port: the OIP paths and /metrics."""
    admin_port: int = Field(default=8081, ge=0, le=65535)
    """Admin port (``PUT/GET /admin/routes``), only with a token."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the OIP gRPC API (``inference.GRPCInferenceService``); off when unset."""
    admin_token_file: str | None = None
    """File holding the admin bearer token; the admin API is off without it."""
    eject_s: float = Field(default=5.0, gt=0)
    """How long an endpoint that failed to connect is left out."""
    max_attempts: int = Field(default=3, ge=1)
    """Endpoints tried for one request when connections fail (infer is idempotent)."""
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Larger request bodies are refused with 413."""
    connect_timeout_s: float = Field(default=1.0, gt=0)
    """A connection to an endpoint not made in this time counts as a failure (retried
    on another endpoint, the endpoint ejected)."""
    drain_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM: how long in-flight requests may take to finish before the exit."""
    wait_report_s: float = Field(default=1.0, gt=0)
    """How long a runtime's reported expected wait (``X-ModelFleet-Expected-Wait-Ms``)
    counts: while every endpoint of a version reports more wait than a request has
    left to its deadline, the gateway refuses it at once (503, reason ``holdback``)
    instead of sending it; an older report counts as no wait, so the endpoint is
    asked again."""
    holdback_wait_ms: float | None = Field(default=None, gt=0)
    """Headroom for higher priority (None, the default: off). A model that shares a runtime with
    a model of higher priority gets no more requests sent there while that runtime
    reports more than this much expected queue wait for it: the lower-priority
    request is refused at the gateway at once (503, reason ``holdback``) instead of
    adding to a backlog that the runtime must read, queue and refuse, on the CPU and
    the connections that its higher-priority models need. Models of equal priority
    are held back alike, each by its own backlog; the highest-priority model on a
    runtime is never held back by this (only by its deadline). Off by default: on
    the overload bench (one runtime) 250 ms made no difference beyond the noise."""


class RoutesDocument(_Strict):
    server: GatewayServer = GatewayServer()
    models: dict[str, ModelRoute] = Field(default_factory=dict)
