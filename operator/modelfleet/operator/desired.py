"""One pass's decisions for a pool, as pure data: placement, each pod's
desired-state document, the gateway's routes, and what each model reports.

Input: the pool's spec, its models' specs, and its pods as observed. Output:
a :class:`Plan`. No I/O here; ``reconcile`` reads and writes around it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from modelfleet.api.routes import ModelRoute, ShadowRoute, VersionRoute
from modelfleet.api.runtime_document import ModelConfig, RuntimeDocument, ServerConfig
from modelfleet.operator.manifests import (
    ADMIN_PORT,
    DATA_PORT,
    DRAIN_GRACE_S,
    GRPC_PORT,
    TOKEN_PATH,
)
from modelfleet.operator.observed import Key, ObservedVersion, PodView
from modelfleet.operator.placement import Demand, Placement, Pod, place
from modelfleet.operator.spec import (
    DEFAULT_MEMORY_MB,
    ModelSpec,
    PoolSpec,
    Role,
    given,
    runtime_model,
)


@dataclass
class VersionReport:
    """One version of a model as this pass leaves it (a status entry)."""

    version: str
    role: Role
    weight: int
    """The spec's share of traffic (percent)."""
    replicas: int
    memory_mb: float
    pods: list[str] = field(default_factory=list)
    """Pods the version is placed on."""
    endpoints: list[str] = field(default_factory=list)
    """Data URLs of the pods where it is loaded and ready (what the gateway routes to)."""
    grpc_endpoints: list[str] = field(default_factory=list)
    """The same pods' gRPC APIs (``ip:port``), in the order of ``endpoints``."""
    loading: list[str] = field(default_factory=list)
    """Pods still loading or warming it."""
    failures: list[str] = field(default_factory=list)
    """``pod: reason`` for each pod that failed to load it."""
    unplaced: str = ""
    """Why replicas are missing (empty when all are placed)."""
    evicted_by: Key | None = None
    """Set in the pass that evicted it: the version that took its place."""
    evicted_earlier: bool = False
    """Unplaced since an earlier pass evicted it (status remembers by whom)."""
    requests: int = 0
    errors: int = 0
    shed: int = 0
    objective_met: int = 0
    objective_missed: int = 0
    in_flight: int = 0
    """Requests in flight (queued or running), summed over the pods."""
    queue_ms: float = 0.0
    """The highest queue wait its pods expect for a request arriving now (ms)."""
    p99_ms: float | None = None
    """The highest p99 latency its pods report for the last minute."""
    enough: int | None = None
    """Ready copies that make the model Ready while fewer than ``replicas`` are (the
    autoscaler's minReplicas); None: every copy must be."""
    retiring: list[str] = field(default_factory=list)
    """Pods whose copy is being removed: out of the routes now, unloaded in a later
    pass, once the routes in force no longer send it requests."""
    traffic: int | None = None
    """The weight the routes give it when that differs from ``weight`` (a draining
    version keeps its share, the stable one gets none, until the stable is ready)."""
    declared_mb: float | None = None
    """``memoryMB`` as the spec declares it (None: not declared)."""
    measured_mb: float | None = None
    """Its peak device memory as its pods measured it (weights plus the largest warm-up
    batch's working memory); None until a pod on a measuring device (CUDA) has."""

    @property
    def over_declared(self) -> bool:
        """Measured above what the spec declares: placement now uses the measurement,
        and the user should raise memoryMB (or lower batching.maxBatchSize)."""
        return (self.declared_mb is not None and self.measured_mb is not None
                and self.measured_mb > self.declared_mb)  # fmt: skip

    @property
    def evicted(self) -> bool:
        """Unplaced because a higher-priority version took its place."""
        return bool(self.unplaced) and (self.evicted_by is not None or self.evicted_earlier)

    @property
    def routed_weight(self) -> int:
        return self.weight if self.traffic is None else self.traffic


@dataclass
class ModelReport:
    name: str
    versions: list[VersionReport]

    @property
    def stable(self) -> VersionReport:
        return self.versions[0]

    @property
    def draining(self) -> list[VersionReport]:
        return [v for v in self.versions if v.role == "draining"]


@dataclass
class Plan:
    placement: Placement
    documents: dict[str, list[ModelConfig]]
    """Pod name -> the models it must host (``models`` of its runtime document)."""
    routes: dict[str, ModelRoute]
    """The gateway routes document's ``models``."""
    reports: dict[str, ModelReport]
    placed: list[tuple[Key, str]] = field(default_factory=list)
    """(version, pod) pairs new in this pass."""
    removed: list[tuple[Key, str]] = field(default_factory=list)
    """(version, pod) pairs dropped in this pass."""


def server_section(pool_spec: PoolSpec) -> ServerConfig:
    """The ``server`` part of a runtime pod's document: the pool's budget is the
    runtime's budget, so placement and the runtime agree on what fits. Only the
    fields set here are written (``torch_threads``, ``forward_nice``,
    ``yield_batch_ms`` and ``express_lane`` only when the pool sets them)."""
    return ServerConfig(
        host="0.0.0.0",
        port=DATA_PORT,
        admin_port=ADMIN_PORT,
        grpc_port=GRPC_PORT,
        admin_token_file=TOKEN_PATH,
        memory_budget_mb=pool_spec.memory_budget_mb,
        drain_grace_s=DRAIN_GRACE_S,
        model_store="/models",
        executor=pool_spec.runtime.executor,
        **given(
            torch_threads=pool_spec.runtime.torch_threads,
            forward_nice=pool_spec.runtime.forward_nice,
            yield_batch_ms=pool_spec.runtime.yield_batch_ms,
            express_lane=pool_spec.runtime.express_lane,
        ),
    )


def runtime_document(pool_spec: PoolSpec, models: list[ModelConfig]) -> RuntimeDocument:
    """A runtime pod's whole desired-state document (what its ConfigMap key holds)."""
    return RuntimeDocument(server=server_section(pool_spec), models=tuple(models))


def measured_peak(pods: list[PodView]) -> dict[Key, float]:
    """Each version's device memory as its pods measured it on the device: the weights
    plus the peak working memory of the largest warm-up batch (MB), the largest over
    its copies. Only runtimes that measure (CUDA) report it; on CPU it is absent."""
    peaks: dict[Key, float] = {}
    for pod in pods:
        for key, seen in pod.observed().items():
            if seen.weights_mb is not None:
                peak = seen.weights_mb + (seen.peak_working_mb or 0.0)
                peaks[key] = max(peaks.get(key, 0.0), peak)
    return peaks


def measured_memory(pods: list[PodView]) -> dict[Key, float]:
    measured: dict[Key, float] = {}
    for pod in pods:
        for key, seen in pod.observed().items():
            if seen.memory_mb > 0:
                measured[key] = max(measured.get(key, 0.0), seen.memory_mb)
    return measured


@dataclass(frozen=True, slots=True)
class _Wanted:
    """A version this pass keeps or places, with the document entry its pods get."""

    version: str
    role: Role
    replicas: int
    weight: int
    entry: ModelConfig
    retiring: tuple[str, ...] = ()
    """Pods whose surplus copy stays loaded, out of the routes, until the routes in
    force stop sending it requests (then placement drops it)."""
    keep: tuple[str, ...] = ()
    """The pods, of those holding it now, whose copies stay (ready ones first)."""


def _stable_ready(key: Key, replicas: int, pods: list[PodView]) -> bool:
    """Every replica the pool can hold is loaded, warm and answering."""
    ready = sum(1 for p in pods if p.ready_for(key))
    return ready >= max(1, min(replicas, len(pods)))


def _surplus(
    key: Key, replicas: int, pods: list[PodView], current: Mapping[Key, list[str]],
    routed: Mapping[Key, Collection[str]] | None, draining: Collection[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:  # fmt: skip
    """(the pods whose copies stay, the pods whose surplus copy retires) when a version
    holds more copies than ``replicas``: copies on pods that stay before those on
    draining pods, then ready copies first (a scale-down never removes the last ready
    copy); a surplus copy that the routes in force still send requests to retires
    (out of the routes, still loaded) instead of going at once. Without ``routed``
    the surplus goes at once."""
    held = current.get(key, [])
    if len(held) <= replicas:
        return tuple(held), ()
    by_name = {p.name: p for p in pods}
    order = sorted(
        held, key=lambda n: (n in draining, not (n in by_name and by_name[n].ready_for(key)), n)
    )
    if routed is None:
        return tuple(order[:replicas]), ()
    in_force = set(routed.get(key, ()))
    retiring = tuple(sorted(n for n in order[replicas:] if n in by_name
                            and f"http://{by_name[n].ip}:{DATA_PORT}" in in_force))  # fmt: skip
    return tuple(order[:replicas]), retiring


def _moving(
    key: Key, replicas: int, pods: list[PodView], current: Mapping[Key, list[str]],
    draining: Collection[str],
) -> int:  # fmt: skip
    """Extra copies a version asks for while copies of it sit on draining pods and it
    is not yet ready on ``replicas`` of the pods that stay: the new copies are placed
    on those pods while the old ones keep serving; once the new ones are ready, the
    old ones are the surplus (``_surplus`` retires copies on draining pods first)."""
    leaving = [n for n in current.get(key, []) if n in draining]
    if not leaving:
        return 0
    staying = [p for p in pods if p.name not in draining]
    ready = sum(1 for p in staying if p.ready_for(key))
    return len(leaving) if ready < min(replicas, len(staying)) else 0


def wanted_versions(
    name: str, spec: ModelSpec, pods: list[PodView], current: Mapping[Key, list[str]],
    serving: Mapping[Key, int], copies: int | None = None,
    routed: Mapping[Key, Collection[str]] | None = None, draining: Collection[str] = (),
    canary_copies: int | None = None,
) -> list[_Wanted]:  # fmt: skip
    """The spec's versions, then the versions it no longer names that still carry
    traffic (``serving``): they stay, as ``draining``, with the traffic they have,
    until the stable version is ready everywhere; then their traffic goes to 0 and,
    once the routes in force show that, they are dropped (unloaded). A left-over
    version that carries no traffic (a canary never routed to, a rollout superseded
    by a later edit) is dropped at once. ``copies``: the stable version's copies when
    the autoscaler decides them (else ``spec.replicas``). ``routed``: the endpoints of
    the routes in force, so that surplus copies leave the routes before the pods.
    ``draining``: pods the pool is about to remove; see ``_moving``. ``canary_copies``:
    the canary's copies when the autoscaler decides them on its own share (else
    ``spec.canary.replicas``)."""
    spec_versions = spec.versions()
    out = []
    for v in spec_versions:
        replicas = (copies if copies is not None and v.role == "stable"
                    else canary_copies if canary_copies is not None and v.role == "canary"
                    else v.replicas)  # fmt: skip
        replicas += _moving((name, v.version), replicas, pods, current, draining)
        keep, retiring = _surplus((name, v.version), replicas, pods, current, routed, draining)
        out.append(_Wanted(v.version, v.role, replicas, v.weight, runtime_model(name, spec, v),
                           retiring, keep))  # fmt: skip
    named = {v.version for v in spec_versions}
    stable = spec_versions[0]
    stable_ready = _stable_ready((name, stable.version), out[0].replicas, pods)
    for key in sorted(k for k in current if k[0] == name and k[1] not in named):
        weight = serving.get(key, 0)
        entry = next((e for p in pods if (e := p.entry(key)) is not None), None)
        if weight <= 0 or entry is None:
            continue
        traffic = 0 if stable_ready else weight
        out.append(_Wanted(key[1], "draining", len(current[key]), traffic, entry,
                           keep=tuple(current[key])))  # fmt: skip
    return out


def plan(
    pool_spec: PoolSpec,
    models: dict[str, ModelSpec],
    pods: list[PodView],
    serving: Mapping[Key, int] | None = None,
    copies: Mapping[str, int] | None = None,
    routed: Mapping[Key, Collection[str]] | None = None,
    draining: Collection[str] = (),
    canary_copies: Mapping[str, int] | None = None,
) -> Plan:
    """``serving``: the weights of the routes in force (versions receiving traffic).
    ``copies``: model -> its stable version's copies, for the models the autoscaler
    scales. ``routed``: the endpoints of the routes in force, by version; with it a
    copy being removed first leaves the routes, and leaves its pod a pass later.
    ``draining``: pods the pool is shrinking away: they take no new copy, and each
    copy they hold is placed on another pod, then leaves them once that one is ready.
    ``canary_copies``: model -> its canary's copies, for the canaries the autoscaler
    scales on their own share."""
    pods = sorted(pods, key=lambda p: p.name)
    current = _hosting(pods)
    wants = _Wants.of(models, pods, current, serving or {}, copies or {}, routed, draining,
                      canary_copies or {})  # fmt: skip
    kept = {**current, **{(n, w.version): [*w.keep, *w.retiring]
                          for n, ws in wants.wanted.items() for w in ws}}  # fmt: skip
    placement = place([Pod(p.name, pool_spec.memory_budget_mb, p.name not in draining)
                       for p in pods], wants.demands, kept)  # fmt: skip
    reports = {name: _model_report(name, wants, placement, pods) for name in sorted(models)}
    max_concurrency = pool_spec.gateway.max_concurrency
    routes = {name: route(models[name], r.versions, max_concurrency) for name, r in reports.items()}
    documents = _documents(pods, wants, placement)
    placed, removed = _changes(current, placement)
    return Plan(placement, documents, routes, reports, placed, removed)


def _hosting(pods: list[PodView]) -> dict[Key, list[str]]:
    """Where each version holds a place now (pod names in the pods' order)."""
    current: dict[Key, list[str]] = {}
    for pod in pods:
        for key in sorted(pod.hosting()):
            current.setdefault(key, []).append(pod.name)
    return current


@dataclass
class _Wants:
    """What this pass asks placement for: each model's wanted versions and their memory."""

    wanted: dict[str, list[_Wanted]] = field(default_factory=dict)
    """Model name -> its versions to keep or place (see ``wanted_versions``)."""
    memory: dict[Key, float] = field(default_factory=dict)
    """The memory each version is placed with (MB)."""
    demands: list[Demand] = field(default_factory=list)

    @classmethod
    def of(
        cls, models: dict[str, ModelSpec], pods: list[PodView], current: Mapping[Key, list[str]],
        serving: Mapping[Key, int], copies: Mapping[str, int],
        routed: Mapping[Key, Collection[str]] | None, draining: Collection[str] = (),
        canary_copies: Mapping[str, int] | None = None,
    ) -> _Wants:  # fmt: skip
        """Every model's wanted versions, in the models' order, as placement demands
        (a retiring copy keeps its place until it leaves)."""
        measured, peaks = measured_memory(pods), measured_peak(pods)
        wants = cls()
        for name, spec in models.items():
            wants.wanted[name] = wanted_versions(
                name,
                spec,
                pods,
                current,
                serving,
                copies.get(name),
                routed,
                draining,
                (canary_copies or {}).get(name),
            )
            for w in wants.wanted[name]:
                key = (name, w.version)
                wants.memory[key] = _memory_mb(w.entry, measured.get(key), peaks.get(key))
                replicas = w.replicas + len(w.retiring)
                wants.demands.append(Demand(key, spec.priority, replicas, wants.memory[key]))
        return wants


def _memory_mb(entry: ModelConfig, measured: float | None, peak: float | None = None) -> float:
    """The memory a version is placed with: its peak as measured on the device (weights
    plus the largest warm-up batch's working memory) once a pod has measured it; before
    that as declared, else as its pods account it, else the default."""
    return peak or entry.memory_mb or measured or DEFAULT_MEMORY_MB


def _model_report(
    name: str, wants: _Wants, placement: Placement, pods: list[PodView]
) -> ModelReport:
    """A model's versions as this pass leaves them."""
    versions = [
        _version_report((name, w.version), w, wants.memory[(name, w.version)], placement, pods)
        for w in wants.wanted[name]
    ]
    if any(v.role == "draining" and v.weight for v in versions):
        for v in versions:  # the old versions keep the traffic until the stable is ready
            if v.role == "stable":
                v.traffic = 0
    return ModelReport(name, versions)


def _version_report(
    key: Key, w: _Wanted, memory_mb: float, placement: Placement, pods: list[PodView]
) -> VersionReport:
    """A version's placement, its traffic figures summed over all pods, and its state
    on each pod it is placed on."""
    placed = placement.pods_of.get(key, [])
    where = [p for p in placed if p not in w.retiring]
    report = VersionReport(w.version, w.role, w.weight, w.replicas, memory_mb, list(where))
    report.retiring = [p for p in placed if p in w.retiring]
    report.declared_mb = w.entry.memory_mb
    report.measured_mb = measured_peak(pods).get(key)
    report.unplaced = placement.unplaced.get(key, "")
    evictor = placement.evicted.get(key)
    report.evicted_by = evictor if report.unplaced and evictor else None
    for pod in pods:
        seen = pod.observed().get(key)
        if seen is not None:
            _add_usage(report, seen)
        if pod.name in where:
            _add_pod_state(report, pod, key, seen)
    return report


def _add_usage(report: VersionReport, seen: ObservedVersion) -> None:
    """Adds one pod's request counters to the version's; its p99 is the highest seen."""
    report.requests += seen.served
    report.errors += seen.errors
    report.shed += seen.shed
    report.objective_met += seen.objective_met
    report.objective_missed += seen.objective_missed
    report.in_flight += seen.inflight
    report.queue_ms = max(report.queue_ms, seen.queue_wait_ms)
    if seen.p99_ms is not None:
        report.p99_ms = max(report.p99_ms or 0.0, seen.p99_ms)


def _add_pod_state(
    report: VersionReport, pod: PodView, key: Key, seen: ObservedVersion | None
) -> None:
    """Files a pod the version is placed on as an endpoint (ready), a failure, or loading."""
    if pod.ready_for(key):
        report.endpoints.append(f"http://{pod.ip}:{DATA_PORT}")
        report.grpc_endpoints.append(f"{pod.ip}:{GRPC_PORT}")
    elif seen is not None and seen.state == "failed":
        report.failures.append(f"{pod.name}: {seen.reason or 'failed to load'}")
    else:
        report.loading.append(pod.name)


def _documents(
    pods: list[PodView], wants: _Wants, placement: Placement
) -> dict[str, list[ModelConfig]]:
    """Each pod's model entries: those of the versions placed on it, models by name."""
    documents: dict[str, list[ModelConfig]] = {p.name: [] for p in pods}
    for name in sorted(wants.wanted):
        for w in wants.wanted[name]:
            for pod_name in placement.pods_of.get((name, w.version), []):
                documents[pod_name].append(w.entry)
    return documents


def sizing_demands(
    models: dict[str, ModelSpec], pods: list[PodView], copies: Mapping[str, int],
    canary_copies: Mapping[str, int] | None = None,
) -> list[Demand]:  # fmt: skip
    """What every model wants placed, with the copies the autoscaler wants (``copies``,
    not capped by the pods there are): what the pool's size is decided on. Memory as
    placement uses it (declared, else measured, else the default)."""
    pods = sorted(pods, key=lambda p: p.name)
    return _Wants.of(models, pods, _hosting(pods), {}, copies, None, (), canary_copies).demands


def settle_scaled(report: VersionReport, floor: int) -> str:
    """An autoscaled version that placement could not give every copy it wants, but at
    least ``floor`` (its minReplicas): the shortfall is a blocked scale-up, not a fault.
    Its wanted copies become those placed, and the reason is returned (empty when
    nothing is short); ``enough`` is set to ``floor``."""
    report.enough = floor
    if not report.unplaced or len(report.pods) < floor:
        return ""
    why, report.unplaced, report.evicted_by = report.unplaced, "", None
    report.replicas = len(report.pods)
    return why


def _changes(
    current: Mapping[Key, list[str]], placement: Placement
) -> tuple[list[tuple[Key, str]], list[tuple[Key, str]]]:
    """The (version, pod) pairs this pass places, and those it removes (both sorted)."""
    before = {(k, p) for k, where in current.items() for p in where}
    after = {(k, p) for k, where in placement.pods_of.items() for p in where}
    return sorted(after - before), sorted(before - after)


def route(spec: ModelSpec, versions: list[VersionReport], max_concurrency: int) -> ModelRoute:
    """Weights from the spec (or a rollout's), endpoints only where the version is
    loaded and ready; a version with no ready endpoint gets weight 0 and, when the
    weights leave nothing ready to route to, what is ready takes the traffic
    (a draining version only when nothing else is ready). A model that may scale to
    zero and has no ready endpoint is ``cold``: the gateways hold its requests until
    a route gives it one (instead of a 503 at once). Built with the gateway's
    models (``modelfleet.api.routes``): a route the gateway would refuse fails here,
    naming the field. ``max_waiting`` is left to the gateway's default (not written)."""
    weights = [v.routed_weight if v.endpoints else 0 for v in versions]
    if not any(weights):  # a shadow never answers a client
        staying = {v.version for v in versions if v.role in ("stable", "canary") and v.endpoints}
        weights = [1 if v.endpoints and v.role != "shadow" and (v.version in staying or not staying)
                   else 0 for v in versions]  # fmt: skip
    shadow = next((v for v in versions if v.role == "shadow" and v.endpoints), None)
    # Scaled to zero (or its first copy not ready yet): the gateways hold its requests.
    cold = (spec.autoscaling is not None and spec.autoscaling.min_replicas == 0
            and not any(v.endpoints for v in versions))  # fmt: skip
    return ModelRoute(
        priority=spec.priority,
        max_concurrency=max_concurrency,
        timeout_ms=spec.queue.timeout_ms,
        versions=tuple(
            VersionRoute(
                version=v.version,
                weight=w,
                endpoints=tuple(v.endpoints),
                grpc_endpoints=tuple(v.grpc_endpoints),
            )
            for v, w in zip(versions, weights, strict=True)
        ),
        **given(shadow=ShadowRoute(version=shadow.version, percent=spec.shadow.percent)
                if shadow is not None and spec.shadow is not None else None,
                cold=True if cold else None),
    )  # fmt: skip
