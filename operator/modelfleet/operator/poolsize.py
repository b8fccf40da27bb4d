"""How many runtime pods a pool should run: a pure function (the pool's second
level of autoscaling; the first adds copies of a model onto the pods there are).

Input: what every model of the pool wants placed (each version's copies, memory and
priority, the copies the autoscaler wants rather than those the pods can hold), the
pool's bounds (``spec.replicas.min``/``max``), its per-pod memory budget, the pods
wanted now, the time, the last change and since when fewer pods would do. Output:
the pods wanted, a reason and since when fewer would do (the operator keeps both
times in the pool's status, so a restart forgets neither).

The rule, with ``needed`` the fewest pods on which placement places every copy
without evicting anything (placement itself is run on that many empty pods, so
its rules: one copy of a version a pod, the budget, priorities, decide):

* up: when ``needed`` exceeds the pods, to ``needed`` at once, at most max; when
  even max pods would not hold every copy, to max and ``ScaleBlocked``;
* down: only once ``needed`` has stayed below the pods for ``scaleDownDelaySeconds``
  and as long since the last change, to ``needed`` (at least min). The operator
  then drains the pods past that count (their copies are placed on the others
  first, then leave the routes, then the pods) before the StatefulSet shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from modelfleet.operator.autoscale import stabilised
from modelfleet.operator.placement import Demand, Pod, place

Reason = Literal["ScaledUp", "ScaledDown", "Steady", "WaitingForScaleDown", "ScaleBlocked",
                 "Clamped"]  # fmt: skip
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    min_pods: int
    max_pods: int
    budget_mb: float
    scale_down_delay_s: float


@dataclass(frozen=True, slots=True)
class PoolInputs:
    demands: Sequence[Demand]
    """Every version of every model of the pool, with the copies it wants."""
    pods: int
    """Runtime pods wanted now (the StatefulSet's replicas)."""
    now: float
    """Seconds (epoch)."""
    last_change: float | None = None
    """When the pods wanted last changed (epoch seconds); None if never."""
    low_since: float | None = None
    """Since when fewer pods would do (epoch seconds); None while they would not."""


@dataclass(frozen=True, slots=True)
class PoolDecision:
    pods: int
    reason: Reason
    message: str
    low_since: float | None
    needed: int | None
    """The fewest pods that hold every copy; None when not even max pods do."""


def pods_needed(demands: Sequence[Demand], budget_mb: float, limit: int) -> int | None:
    """The fewest pods (at most ``limit``) on which placement places every copy of
    every demand without evicting one; None when ``limit`` pods do not suffice."""
    wanted = [d for d in demands if d.replicas > 0]
    if not wanted:
        return 0
    if any(d.memory_mb > budget_mb + _EPS for d in wanted):
        return None
    # Lower bounds: one copy of a version a pod; the memory of all copies.
    total = sum(d.memory_mb * d.replicas for d in wanted)
    low = max(max(d.replicas for d in wanted), math.ceil(total / budget_mb - _EPS), 1)
    for count in range(low, limit + 1):
        pods = [Pod(f"pod-{i:04d}", budget_mb) for i in range(count)]
        result = place(pods, wanted)
        if not result.unplaced:
            return count
    return None


def decide_pods(policy: PoolPolicy, inputs: PoolInputs) -> PoolDecision:
    """The runtime pods the pool should run now, and why (see the module's docstring)."""
    lo, hi = policy.min_pods, max(policy.min_pods, policy.max_pods)
    current = inputs.pods
    needed = pods_needed(inputs.demands, policy.budget_mb, hi)
    if not lo <= current <= hi:
        pods = min(max(current, lo), hi)
        return PoolDecision(pods, "Clamped", f"pods {current} -> {pods}: brought within "
                            f"replicas.min {lo} and replicas.max {hi}", None, needed)  # fmt: skip
    if needed is None:
        what = f"the models need more than replicas.max {hi} pods"
        if current < hi:
            return PoolDecision(hi, "ScaleBlocked", f"pods {current} -> {hi}: {what}; "
                                "the pool stops at its max", None, needed)  # fmt: skip
        return PoolDecision(hi, "ScaleBlocked", f"{what}; the pool is at its max", None, needed)
    want = max(lo, needed)
    if want > current:
        return PoolDecision(want, "ScaledUp", f"pods {current} -> {want}: the models' copies "
                            f"need {needed} pod(s)", None, needed)  # fmt: skip
    if want == current:
        return PoolDecision(current, "Steady", f"the models' copies fit on {needed} pod(s); "
                            f"{current} running", None, needed)  # fmt: skip
    low_since, waited = stabilised(inputs.now, inputs.low_since, inputs.last_change)
    if waited + _EPS >= policy.scale_down_delay_s:
        return PoolDecision(want, "ScaledDown", f"pods {current} -> {want}: the models' copies "
                            f"fit on {needed} pod(s) for {waited:.0f} s", low_since, needed)  # fmt: skip
    return PoolDecision(current, "WaitingForScaleDown",
                        f"the models' copies fit on {needed} pod(s); removing pods after "
                        f"{policy.scale_down_delay_s:g} s ({waited:.0f} s so far)",
                        low_since, needed)  # fmt: skip
