"""Placement of model versions onto pool pods: a pure, deterministic function.

Rules (docs/architecture.md, "Placement"): never over a pod's memory budget; higher
priority first; a lower-priority placement is evicted only when that is the only way
to place a higher one (and the evicted version is told who took its place); replicas of one
version on distinct pods; placements kept while still valid (minimal churn); the
same input always gives the same output; a draining pod keeps what it holds but
takes nothing new.
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
    accepts_new: bool = True
    """False for a pod being drained (the pool is shrinking): it keeps what it holds
    until that is placed elsewhere, and is never given a new placement."""


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


_SLACK_MB = 1e-9
"""Float slack when comparing memory: a version that fills a pod exactly fits."""


@dataclass
class _Board:
    """The placement being built: where each version is, what each pod hosts and has free."""

    pods: list[Pod]
    """Sorted by name."""
    budget: dict[str, float]
    """Pod name -> memory budget (MB)."""
    by_key: dict[Key, Demand]
    closed: frozenset[str]
    """Pods that take no new placement (draining)."""
    free: dict[str, float]
    """Pod name -> budget not yet taken (MB)."""
    hosted: dict[str, list[Key]]
    """Pod name -> the versions placed on it, in the order they were placed."""
    result: dict[Key, list[str]]
    """Version -> the pods it is placed on, in the order they were taken."""
    evicted: dict[Key, Key] = field(default_factory=dict)
    """Victim -> winner."""

    @classmethod
    def empty(cls, pods: Iterable[Pod], ordered: list[Demand]) -> _Board:
        """Every pod empty, every demand without a pod."""
        pod_list = sorted(pods, key=lambda p: p.name)
        budget = {p.name: p.budget_mb for p in pod_list}
        return cls(
            pods=pod_list,
            budget=budget,
            by_key={d.key: d for d in ordered},
            closed=frozenset(p.name for p in pod_list if not p.accepts_new),
            free=dict(budget),
            hosted={p.name: [] for p in pod_list},
            result={d.key: [] for d in ordered},
        )

    def fits(self, pod: str, memory_mb: float) -> bool:
        """Whether the pod's free memory holds ``memory_mb``."""
        return self.free[pod] + _SLACK_MB >= memory_mb

    def put(self, key: Key, pod: str) -> None:
        self.result[key].append(pod)
        self.hosted[pod].append(key)
        self.free[pod] -= self.by_key[key].memory_mb

    def drop(self, key: Key, pod: str) -> None:
        self.result[key].remove(pod)
        self.hosted[pod].remove(key)
        self.free[pod] += self.by_key[key].memory_mb


def place(
    pods: Iterable[Pod],
    demands: Iterable[Demand],
    current: Mapping[Key, Iterable[str]] | None = None,
) -> Placement:
    ordered = _order(demands)
    board = _Board.empty(pods, ordered)
    # 1. Keep what is still valid, higher priority first (minimal churn).
    for demand in ordered:
        _keep(board, demand, (current or {}).get(demand.key, ()))
    # 2. Place missing replicas, higher priority first; evict only when nothing fits.
    hopeless: list[tuple[int, float]] = []
    for demand in ordered:
        _place_missing(board, demand, hopeless)
    # 3. Say where each version runs and why any replicas are missing.
    return _outcome(board, ordered)


def _keep(board: _Board, demand: Demand, where: Iterable[str]) -> None:
    """Keeps the version on its current pods that still exist (the first ``replicas``
    of them by name) wherever it still fits."""
    kept = sorted(set(where) & set(board.budget))
    for pod in kept[: demand.replicas]:
        if board.fits(pod, demand.memory_mb):
            board.put(demand.key, pod)


def _place_missing(board: _Board, demand: Demand, hopeless: list[tuple[int, float]]) -> None:
    """Adds the demand's missing replicas, each on the best-fitting pod, else where the
    cheapest eviction makes room; stops when neither is possible.

    ``hopeless`` holds the (priority, memory) pairs nothing could be evicted for. Pods
    only fill up from here on, so nothing can be for lower priority or larger memory either."""
    while len(board.result[demand.key]) < demand.replicas:
        pod = _best_fit(board, demand)
        if pod is not None:
            board.put(demand.key, pod)
            continue
        if any(p >= demand.priority and m <= demand.memory_mb for p, m in hopeless):
            return
        choice = _cheapest_eviction(demand, board)
        if choice is None:
            if not board.result[demand.key]:  # no pod was excluded: the finding is general
                hopeless.append((demand.priority, demand.memory_mb))
            return
        pod, victims = choice
        for victim in victims:
            board.drop(victim, pod)
            board.evicted[victim] = demand.key
        board.put(demand.key, pod)


def _best_fit(board: _Board, demand: Demand) -> str | None:
    """The pod, not yet hosting the demand, left with the least free memory once it
    takes it (ties by name); None when it fits nowhere."""
    candidates = [
        p.name for p in board.pods
        if p.name not in board.result[demand.key] and p.name not in board.closed
        and board.fits(p.name, demand.memory_mb)
    ]  # fmt: skip
    if not candidates:
        return None
    return min(candidates, key=lambda n: (board.free[n] - demand.memory_mb, n))


def _outcome(board: _Board, ordered: list[Demand]) -> Placement:
    """Each version's pods (sorted), and the reason for each one short of replicas."""
    placement = Placement(evicted=board.evicted)
    for demand in ordered:
        pods_for = sorted(board.result[demand.key])
        placement.pods_of[demand.key] = pods_for
        missing = demand.replicas - len(pods_for)
        if missing > 0:
            placement.unplaced[demand.key] = _unplaced_reason(board, demand, missing)
    return placement


def _unplaced_reason(board: _Board, demand: Demand, missing: int) -> str:
    """Who evicted the version, or why its ``missing`` replicas fit nowhere."""
    winner = board.evicted.get(demand.key)
    if winner is not None:
        return (
            f"evicted by {winner[0]} version {winner[1]} (priority {board.by_key[winner].priority})"
        )
    largest = max(board.budget.values(), default=0)
    return (
        f"{missing} of {demand.replicas} replicas do not fit: each needs "
        f"{demand.memory_mb:g} MB, {len(board.pods)} pod(s) with budgets up to {largest:g} MB, "
        "held by models of equal or higher priority"
    )


def _cheapest_eviction(demand: Demand, board: _Board) -> tuple[str, list[Key]] | None:
    """The pod where evicting strictly lower-priority versions frees enough memory,
    evicting the least important, then the least memory; None when there is none."""
    by_key = board.by_key
    best: tuple[tuple[int, float, str], str, list[Key]] | None = None
    for pod in board.pods:
        if (
            pod.name in board.result[demand.key]
            or pod.name in board.closed
            or pod.budget_mb + _SLACK_MB < demand.memory_mb
        ):
            continue
        lower = sorted(
            (k for k in board.hosted[pod.name] if by_key[k].priority < demand.priority),
            key=lambda k: (by_key[k].priority, -by_key[k].memory_mb, k),
        )
        victims: list[Key] = []
        gained = board.free[pod.name]
        for key in lower:
            if gained + _SLACK_MB >= demand.memory_mb:
                break
            victims.append(key)
            gained += by_key[key].memory_mb
        if gained + _SLACK_MB < demand.memory_mb:
            continue
        cost = (
            max(by_key[v].priority for v in victims),
            sum(by_key[v].memory_mb for v in victims),
            pod.name,
        )
        if best is None or cost < best[0]:
            best = (cost, pod.name, victims)
    return None if best is None else (best[1], best[2])
