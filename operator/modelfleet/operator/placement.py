"""Placement of model versions onto pool pods: a pure, deterministic function.

Rules (docs/architecture.md, "Placement"): never over a pod's memory budget; higher
priority first; a lower-priority placement is evicted only when that is the only way
to place a higher one (and the evicted version is told who took its place); replicas of one
version on distinct pods; placements kept while still valid (minimal churn); the
same input always gives the same output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]
"""(model, version): model is ``namespace/name``."""


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    budget_mb: float


@dataclass(frozen=True, slots=True)
class Demand:
    key: Key
    priority: int
    replicas: int
    memory_mb: float


@dataclass
class Placement:
    pods_of: dict[Key, list[str]] = field(default_factory=dict)
    """Where each version runs (pod names, sorted)."""
    unplaced: dict[Key, str] = field(default_factory=dict)
    """Versions short of replicas, with the reason (who evicted them, or what is missing)."""
    evicted: dict[Key, Key] = field(default_factory=dict)
    """Versions that lost a placement to a higher-priority one: victim -> winner."""

    def used_mb(self, pod: str, demands: Mapping[Key, Demand]) -> float:
        return sum(demands[k].memory_mb for k, pods in self.pods_of.items() if pod in pods)


def _order(demands: Iterable[Demand]) -> list[Demand]:
    return sorted(demands, key=lambda d: (-d.priority, d.key))


def place(
    pods: Iterable[Pod],
    demands: Iterable[Demand],
    current: Mapping[Key, Iterable[str]] | None = None,
) -> Placement:
    pod_list = sorted(pods, key=lambda p: p.name)
    budget = {p.name: p.budget_mb for p in pod_list}
    ordered = _order(demands)
    by_key = {d.key: d for d in ordered}
    free = dict(budget)
    hosted: dict[str, list[Key]] = {p.name: [] for p in pod_list}
    result: dict[Key, list[str]] = {d.key: [] for d in ordered}
    evicted: dict[Key, Key] = {}

    def put(key: Key, pod: str) -> None:
        result[key].append(pod)
        hosted[pod].append(key)
        free[pod] -= by_key[key].memory_mb

    def drop(key: Key, pod: str) -> None:
        result[key].remove(pod)
        hosted[pod].remove(key)
        free[pod] += by_key[key].memory_mb

    # 1. Keep what is still valid, higher priority first (minimal churn).
    for demand in ordered:
        kept = sorted(set((current or {}).get(demand.key, ())) & set(budget))
        for pod in kept[: demand.replicas]:
            if free[pod] + 1e-9 >= demand.memory_mb:
                put(demand.key, pod)

    # 2. Place missing replicas, higher priority first; evict only when nothing fits.
    # Pods only fill up from here on, so once nothing could be evicted for
    # (priority p, memory m), nothing can for lower p or larger m either.
    hopeless: list[tuple[int, float]] = []
    for demand in ordered:
        while len(result[demand.key]) < demand.replicas:
            candidates = [
                p.name for p in pod_list
                if p.name not in result[demand.key] and free[p.name] + 1e-9 >= demand.memory_mb
            ]  # fmt: skip
            if candidates:
                # Best fit: the pod left with the least free memory; ties by name.
                put(demand.key, min(candidates, key=lambda n: (free[n] - demand.memory_mb, n)))
                continue
            if any(p >= demand.priority and m <= demand.memory_mb for p, m in hopeless):
                break
            choice = _cheapest_eviction(demand, pod_list, free, hosted, by_key, result)
            if choice is None:
                if not result[demand.key]:  # no pod was excluded: the finding is general
                    hopeless.append((demand.priority, demand.memory_mb))
                break
            pod, victims = choice
            for victim in victims:
                drop(victim, pod)
                evicted[victim] = demand.key
            put(demand.key, pod)

    placement = Placement(evicted=evicted)
    for demand in ordered:
        pods_for = sorted(result[demand.key])
        placement.pods_of[demand.key] = pods_for
        missing = demand.replicas - len(pods_for)
        if missing <= 0:
            continue
        if demand.key in evicted:
            winner = evicted[demand.key]
            placement.unplaced[demand.key] = (
                f"evicted by {winner[0]} version {winner[1]} (priority {by_key[winner].priority})"
            )
        else:
            largest = max(budget.values(), default=0)
            placement.unplaced[demand.key] = (
                f"{missing} of {demand.replicas} replicas do not fit: each needs "
                f"{demand.memory_mb:g} MB, {len(pod_list)} pod(s) with budgets up to {largest:g} MB, "
                "held by models of equal or higher priority"
            )
    return placement


def _cheapest_eviction(
    demand: Demand,
    pods: list[Pod],
    free: dict[str, float],
    hosted: dict[str, list[Key]],
    by_key: dict[Key, Demand],
    result: dict[Key, list[str]],
) -> tuple[str, list[Key]] | None:
    """The pod where evicting strictly lower-priority versions frees enough memory,
    evicting the least important, then the least memory; None when there is none."""
    best: tuple[tuple[int, float, str], str, list[Key]] | None = None
    for pod in pods:
        if pod.name in result[demand.key] or pod.budget_mb + 1e-9 < demand.memory_mb:
            continue
        lower = sorted(
            (k for k in hosted[pod.name] if by_key[k].priority < demand.priority),
            key=lambda k: (by_key[k].priority, -by_key[k].memory_mb, k),
        )
        victims: list[Key] = []
        gained = free[pod.name]
        for key in lower:
            if gained + 1e-9 >= demand.memory_mb:
                break
            victims.append(key)
            gained += by_key[key].memory_mb
        if gained + 1e-9 < demand.memory_mb:
            continue
        cost = (
            max(by_key[v].priority for v in victims),
            sum(by_key[v].memory_mb for v in victims),
            pod.name,
        )
        if best is None or cost < best[0]:
            best = (cost, pod.name, victims)
    return None if best is None else (best[1], best[2])
