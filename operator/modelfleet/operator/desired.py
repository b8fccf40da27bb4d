"""One pass's decisions for a pool, as pure data: placement, each pod's
desired-state document, the gateway's routes, and what each model reports.

Input: the pool's spec, its models' specs, and its pods as observed. Output:
a :class:`Plan`. No I/O here; ``reconcile`` reads and writes around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfleet.operator.manifests import ADMIN_PORT, DATA_PORT, DRAIN_GRACE_S, TOKEN_PATH
from modelfleet.operator.observed import Key, PodView
from modelfleet.operator.placement import Demand, Placement, Pod, place
from modelfleet.operator.spec import DEFAULT_MEMORY_MB, ModelSpec, PoolSpec, Role, runtime_model


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
    loading: list[str] = field(default_factory=list)
    """Pods still loading or warming it."""
    failures: list[str] = field(default_factory=list)
    """``pod: reason`` for each pod that failed to load it."""
    unplaced: str = ""
    """Why replicas are missing (empty when all are placed)."""
    evicted_by: Key | None = None
    """Set in the pass that evicted it: the version that took its place."""
    requests: int = 0
    errors: int = 0


@dataclass
class ModelReport:
    name: str
    versions: list[VersionReport]

    @property
    def stable(self) -> VersionReport:
        return self.versions[0]


@dataclass
class Plan:
    placement: Placement
    documents: dict[str, list[dict[str, object]]]
    """Pod name -> the models it must host (``models`` of its runtime document)."""
    routes: dict[str, dict[str, object]]
    """The gateway routes document's ``models``."""
    reports: dict[str, ModelReport]
    placed: list[tuple[Key, str]] = field(default_factory=list)
    """(version, pod) pairs new in this pass."""
    removed: list[tuple[Key, str]] = field(default_factory=list)
    """(version, pod) pairs dropped in this pass."""


def server_section(pool_spec: PoolSpec) -> dict[str, object]:
    """The ``server`` part of a runtime pod's document: the pool's budget is the
    runtime's budget, so placement and the runtime agree on what fits."""
    return {
        "host": "0.0.0.0",
        "port": DATA_PORT,
        "admin_port": ADMIN_PORT,
        "admin_token_file": TOKEN_PATH,
        "memory_budget_mb": pool_spec.memory_budget_mb,
        "drain_grace_s": DRAIN_GRACE_S,
        "model_store": "/models",
    }


def measured_memory(pods: list[PodView]) -> dict[Key, float]:
    measured: dict[Key, float] = {}
    for pod in pods:
        for key, seen in pod.observed().items():
            if seen.memory_mb > 0:
                measured[key] = max(measured.get(key, 0.0), seen.memory_mb)
    return measured


def plan(pool_spec: PoolSpec, models: dict[str, ModelSpec], pods: list[PodView]) -> Plan:
    pods = sorted(pods, key=lambda p: p.name)
    measured = measured_memory(pods)
    current: dict[Key, list[str]] = {}
    for pod in pods:
        for key in sorted(pod.hosting()):
            current.setdefault(key, []).append(pod.name)
    demands: list[Demand] = []
    memory: dict[Key, float] = {}
    for name, spec in models.items():
        for v in spec.versions():
            key = (name, v.version)
            memory[key] = spec.memory_mb or measured.get(key) or DEFAULT_MEMORY_MB
            demands.append(Demand(key, spec.priority, v.replicas, memory[key]))
    placement = place([Pod(p.name, pool_spec.memory_budget_mb) for p in pods], demands, current)

    documents: dict[str, list[dict[str, object]]] = {p.name: [] for p in pods}
    routes: dict[str, dict[str, object]] = {}
    reports: dict[str, ModelReport] = {}
    for name in sorted(models):
        spec = models[name]
        versions: list[VersionReport] = []
        for v in spec.versions():
            key = (name, v.version)
            where = placement.pods_of.get(key, [])
            for pod_name in where:
                documents[pod_name].append(runtime_model(name, spec, v))
            report = VersionReport(
                v.version, v.role, v.weight, v.replicas, memory[key], list(where)
            )
            report.unplaced = placement.unplaced.get(key, "")
            evictor = placement.evicted.get(key)
            report.evicted_by = evictor if report.unplaced and evictor else None
            for pod in pods:
                seen = pod.observed().get(key)
                if seen is not None:
                    report.requests += seen.served
                    report.errors += seen.errors
                if pod.name not in where:
                    continue
                if pod.ready_for(key):
                    report.endpoints.append(f"http://{pod.ip}:{DATA_PORT}")
                elif seen is not None and seen.state == "failed":
                    report.failures.append(f"{pod.name}: {seen.reason or 'failed to load'}")
                else:
                    report.loading.append(pod.name)
            versions.append(report)
        reports[name] = ModelReport(name, versions)
        routes[name] = route(spec, versions, pool_spec.gateway.max_concurrency)

    before = {(k, p) for k, where in current.items() for p in where}
    after = {(k, p) for k, where in placement.pods_of.items() for p in where}
    return Plan(
        placement, documents, routes, reports, sorted(after - before), sorted(before - after)
    )


def route(
    spec: ModelSpec, versions: list[VersionReport], max_concurrency: int
) -> dict[str, object]:
    """Weights from the spec, endpoints only where the version is loaded and
    ready; a version with no ready endpoint gets weight 0 and, when the spec's
    weights leave nothing ready to route to, what is ready takes the traffic."""
    entries = [
        {"version": v.version, "weight": v.weight if v.endpoints else 0, "endpoints": v.endpoints}
        for v in versions
    ]
    if not any(e["weight"] for e in entries):
        for e in entries:
            e["weight"] = 1 if e["endpoints"] else 0
    return {
        "priority": spec.priority,
        "max_concurrency": max_concurrency,
        "timeout_ms": spec.queue.timeout_ms,
        "versions": entries,
    }
