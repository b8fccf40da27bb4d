"""A pool's size in one convergence pass: the pure decision (``poolsize``) around the
reads and writes it needs (the StatefulSet's replicas, the pool's events).

Growing is immediate: the StatefulSet gets more replicas, and the new pods take
copies as soon as they answer. Shrinking drains first: the pods past the new count
(the StatefulSet removes the highest ordinals) are ``draining`` for placement, which
places their copies on the other pods, routes to those once they are ready, then
takes the old copies out of the routes and off the pods; only when the draining pods
hold nothing and no route in force names them does the StatefulSet shrink.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from modelfleet.operator import metrics
from modelfleet.operator.kube import Kube
from modelfleet.operator.manifests import DATA_PORT
from modelfleet.operator.observed import PodView
from modelfleet.operator.placement import Demand
from modelfleet.operator.poolsize import PoolDecision, PoolInputs, PoolPolicy, decide_pods
from modelfleet.operator.spec import PoolSpec
from modelfleet.operator.stamps import epoch as _epoch
from modelfleet.operator.stamps import iso as _iso


@dataclass
class PoolSizing:
    """The pool's size in one pass: the decision, the StatefulSet's replicas before and
    after this pass, and the pods being drained."""

    decision: PoolDecision
    replicas: int
    """The StatefulSet's replicas after this pass."""
    before: int
    last_change: float | None
    draining: list[str] = field(default_factory=list)

    def status(self, pods: list[PodView]) -> dict[str, Any]:
        """``status.scaling`` of the pool (a merge patch: None removes a key)."""
        d = self.decision
        ready = sum(1 for p in pods if p.reachable and p.name not in self.draining)
        return {"desiredPods": d.pods, "currentPods": self.replicas, "readyPods": ready,
                "neededPods": d.needed, "reason": d.reason, "detail": d.message,
                "draining": self.draining or None, "lastScaleTime": _iso(self.last_change),
                "lowSince": _iso(d.low_since)}  # fmt: skip

    @property
    def busy(self) -> bool:
        """A change under way: pods added or being drained (a pending scale-down is
        watched at the converged pace; its delay is minutes)."""
        return self.replicas != self.before or self.decision.reason in ("ScaledUp", "ScaledDown")


def ordinal(pod_name: str) -> int:
    """A StatefulSet pod's ordinal (``<pool>-<n>``); -1 for another name."""
    tail = pod_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


async def size_pool(
    kube: Kube, pool_obj: dict[str, Any], spec: PoolSpec, demands: list[Demand],
    pods: list[PodView], routed_urls: Collection[str], remembered: dict[str, Any],
) -> PoolSizing | None:  # fmt: skip
    """Decides the pool's size, grows the StatefulSet at once or shrinks it once the
    pods past the new size are drained, with an event for each change and one for a
    new ScaleBlocked. None for a pool whose size is fixed (``replicas.max`` at most
    ``min``) or whose StatefulSet is not there yet."""
    bounds = spec.replicas
    if bounds.max <= bounds.min:
        return None
    meta = pool_obj["metadata"]
    sts = await kube.get("apps/v1", "StatefulSet", meta["namespace"], meta["name"])
    if sts is None:
        return None
    replicas = int((sts.get("spec") or {}).get("replicas") or bounds.min)
    now = time.time()
    last_change = _epoch(remembered.get("lastScaleTime"))
    policy = PoolPolicy(bounds.min, bounds.max, spec.memory_budget_mb,
                        float(bounds.scale_down_delay_seconds))  # fmt: skip
    decision = decide_pods(policy, PoolInputs(demands, replicas, now, last_change,
                                              _epoch(remembered.get("lowSince"))))  # fmt: skip
    sizing = PoolSizing(decision, replicas, replicas, last_change)
    if decision.pods > replicas:
        await _resize(kube, pool_obj, decision.pods)
        sizing.replicas, sizing.last_change = decision.pods, now
        await kube.event(pool_obj, "ScaledUp", decision.message)
        metrics.record_decision(meta["namespace"], "InferencePool", meta["name"], "ScaledUp")
    elif decision.pods < replicas:
        sizing.draining = sorted(p.name for p in pods if ordinal(p.name) >= decision.pods)
        if _drained(sizing.draining, pods, routed_urls):
            await _resize(kube, pool_obj, decision.pods)
            sizing.replicas, sizing.last_change = decision.pods, now
            await kube.event(pool_obj, "ScaledDown", f"{decision.message}; drained "
                             f"{', '.join(sizing.draining) or 'nothing'}")  # fmt: skip
            sizing.draining = []
            metrics.record_decision(meta["namespace"], "InferencePool", meta["name"], "ScaledDown")
    if decision.reason == "ScaleBlocked" and remembered.get("reason") != "ScaleBlocked":
        await kube.event(pool_obj, "ScaleBlocked", decision.message, "Warning")
        metrics.record_decision(meta["namespace"], "InferencePool", meta["name"], "ScaleBlocked")
    return sizing


def _drained(draining: list[str], pods: list[PodView], routed_urls: Collection[str]) -> bool:
    """Every draining pod answers, holds no model version, and no route in force names it."""
    by_name = {p.name: p for p in pods}
    for name in draining:
        pod = by_name[name]
        if not pod.reachable or pod.hosting() or f"http://{pod.ip}:{DATA_PORT}" in routed_urls:
            return False
    return True


async def _resize(kube: Kube, pool_obj: dict[str, Any], replicas: int) -> None:
    meta = pool_obj["metadata"]
    await kube.patch("apps/v1", "StatefulSet", meta["namespace"], meta["name"],
                     {"spec": {"replicas": replicas}})  # fmt: skip
