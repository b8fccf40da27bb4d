"""The operator's own Prometheus metrics: what the autoscalers decided, per model and
per pool, from the figures each pass already samples from the runtimes (no
Prometheus server needed to decide; this is only for people and dashboards).

Served by ``modelfleet operator --metrics-port N`` at ``/metrics`` (off by default;
the Helm chart turns it on)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()
DESIRED_COPIES = Gauge(
    "modelfleet_desired_copies",
    "Copies of a model's stable version wanted now (the autoscaler's decision, else spec.replicas).",
    ["namespace", "pool", "model"], registry=REGISTRY,
)  # fmt: skip
READY_COPIES = Gauge(
    "modelfleet_ready_copies",
    "Copies of a model's stable version loaded, warm and routed to.",
    ["namespace", "pool", "model"], registry=REGISTRY,
)  # fmt: skip
SCALE_DECISIONS = Counter(
    "modelfleet_scale_decisions",
    "Scale decisions that changed something or were blocked, by resource and reason "
    "(ScaledUp, ScaledDown, ScaledToZero, ScaleBlocked).",
    ["namespace", "kind", "name", "reason"], registry=REGISTRY,
)  # fmt: skip
POOL_PODS = Gauge(
    "modelfleet_pool_pods",
    "A pool's runtime pods: desired (what its models' copies call for, within min..max), "
    "current (the StatefulSet's replicas) and ready.",
    ["namespace", "pool", "state"], registry=REGISTRY,
)  # fmt: skip

_models: dict[tuple[str, str], set[str]] = {}
"""(namespace, pool) -> the models whose series were last set, to remove the gone ones."""


def serve(port: int, address: str = "0.0.0.0") -> None:
    """/metrics on ``address:port`` from a thread of its own."""
    start_http_server(port, addr=address, registry=REGISTRY)


def record_copies(namespace: str, pool: str, copies: Mapping[str, tuple[int, int]]) -> None:
    """Each model of a pool -> (desired, ready) copies; the series of models no longer in
    the pool are removed."""
    for model, (desired, ready) in copies.items():
        DESIRED_COPIES.labels(namespace, pool, model).set(desired)
        READY_COPIES.labels(namespace, pool, model).set(ready)
    for gone in _models.get((namespace, pool), set()) - set(copies):
        DESIRED_COPIES.remove(namespace, pool, gone)
        READY_COPIES.remove(namespace, pool, gone)
    _models[(namespace, pool)] = set(copies)


def record_decision(namespace: str, kind: str, name: str, reason: str) -> None:
    SCALE_DECISIONS.labels(namespace, kind, name, reason).inc()


def record_pool(namespace: str, pool: str, desired: int, current: int, ready: int) -> None:
    for state, value in (("desired", desired), ("current", current), ("ready", ready)):
        POOL_PODS.labels(namespace, pool, state).set(value)
