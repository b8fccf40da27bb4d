"""The built-in autoscaler's decision for one model version: a pure function.

Input: the version's load as the operator samples it from the runtimes (requests in
flight summed over its copies, the highest queue time of its copies, its request
rate), the copies wanted now and ready, the policy (``spec.autoscaling``), the time,
the time of the last change and since when the load has been low. Output: the copies
wanted, a reason and since when the load has been low (the operator keeps both times
in the model's status, so a restart forgets neither).

The rule, with ``demand`` the copies that would hold the load at the target
(requests in flight / target, or ready copies x queue time / target):

* up: when ``ceil(demand)`` exceeds the copies, to ``ceil(demand)`` at once
  (proportional: a load that doubles doubles the copies in one step), at most max;
* down: only to ``ceil(demand / 0.7)`` (the copies stay below 70% of the target,
  a band that a steady load never crosses back), at least min, and only once the
  load has asked for fewer copies continuously for ``scaleDownDelaySeconds`` and
  as long since the last change (the stabilisation window);
* never below min or above max (a count outside them is brought inside first),
  and never below one copy while the version has traffic or requests wait for it;
* scale to zero (min 0 only): from one copy, once the version has had no traffic
  (no request answered and none in flight) for ``scaleDownDelaySeconds`` and as
  long since the last change, to 0 (``ScaledToZero``); from more copies the
  scale-down stops at one first, so the delay counts from the last request;
* from zero: any demand — requests waiting at the gateways, or one held there after
  the scale to zero (``held_at`` newer than the last change), or traffic the
  runtimes still report — gives one copy at once (``ScaledUp``); the gateways hold
  the model's requests until it is ready (its route is ``cold``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from modelfleet.operator.observed import Key, PodView
from modelfleet.operator.spec import Autoscaling

DOWN_BELOW = 0.7
"""Copies are removed only while the load per copy stays below this share of the target."""
LOAD_WINDOW_S = 10.0
"""In-flight and queue-time samples are averaged over this long."""
_EPS = 1e-9

Reason = Literal["ScaledUp", "ScaledDown", "ScaledToZero", "Steady", "WaitingForScaleDown",
                 "Clamped", "NoLoadSample"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Policy:
    min_replicas: int
    max_replicas: int
    metric: Literal["inFlight", "queueMs"]
    target: float
    scale_down_delay_s: float

    @classmethod
    def of(cls, spec: Autoscaling) -> Policy:
        if spec.target_in_flight is not None:
            metric: Literal["inFlight", "queueMs"] = "inFlight"
            target = spec.target_in_flight
        else:
            metric, target = "queueMs", spec.target_queue_ms or 1.0
        return cls(spec.min_replicas, spec.max_replicas, metric, target,
                   float(spec.scale_down_delay_seconds))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Load:
    """A version's load, averaged over the last ``LOAD_WINDOW_S``."""

    in_flight: float
    """Requests in flight (queued or running), summed over its copies."""
    queue_ms: float
    """The queue time a request arriving now can expect, the highest of its copies (ms)."""
    request_rate: float
    """Requests per second (answered or failed)."""

    @property
    def has_traffic(self) -> bool:
        return self.in_flight > 0 or self.request_rate > 0


@dataclass(frozen=True, slots=True)
class Inputs:
    load: Load | None
    """None before the operator has sampled enough."""
    copies: int
    """Copies wanted now (the last decision)."""
    ready: int
    """Copies loaded, warm and routed to."""
    now: float
    """Seconds (epoch)."""
    last_change: float | None = None
    """When the copies last changed (epoch seconds); None if never."""
    low_since: float | None = None
    """Since when the load has asked for fewer copies (epoch seconds); None while it does not."""
    waiting: int = 0
    """Requests for the model waiting at the gateways now (held while it has no copy)."""
    held_at: float | None = None
    """When a gateway last held a request for the model (epoch seconds); None if never."""

    @property
    def demand_at_zero(self) -> int:
        """Requests asking for a first copy: those waiting, else one held since the
        scale to zero (the last change), else none."""
        if self.waiting > 0:
            return self.waiting
        newer = self.held_at is not None and (
            self.last_change is None or self.held_at >= self.last_change)  # fmt: skip
        return 1 if newer else 0


@dataclass(frozen=True, slots=True)
class Decision:
    copies: int
    reason: Reason
    message: str
    low_since: float | None
    load: float | None
    """The figure the decision compared with the target."""

    def changed(self, before: int) -> bool:
        return self.copies != before


def decide(policy: Policy, inputs: Inputs) -> Decision:
    """The copies the version should run now, and why (see the module's docstring)."""
    lo, hi = policy.min_replicas, max(policy.min_replicas, policy.max_replicas)
    current = inputs.copies
    if not lo <= current <= hi:
        copies = min(max(current, lo), hi)
        return Decision(copies, "Clamped", f"copies {current} -> {copies}: brought within "
                        f"minReplicas {lo} and maxReplicas {hi}", None, None)  # fmt: skip
    load = inputs.load
    if current == 0:
        return _from_zero(inputs, hi)
    if load is None:
        return Decision(current, "NoLoadSample", "no load sampled yet; copies kept",
                        inputs.low_since, None)  # fmt: skip
    value = load.in_flight if policy.metric == "inFlight" else load.queue_ms
    serving = inputs.ready or current
    demand = value / policy.target * (1 if policy.metric == "inFlight" else serving)
    what = (f"{value:.2f} requests in flight for a target of {policy.target:g} a copy"
            if policy.metric == "inFlight"
            else f"queue time {value:.1f} ms on {serving} copies for a target of "
                 f"{policy.target:g} ms")  # fmt: skip
    up = min(hi, math.ceil(demand - _EPS))
    if up > current:
        return Decision(up, "ScaledUp", f"copies {current} -> {up}: {what}", None, value)
    busy = load.has_traffic or inputs.waiting > 0
    down = max(lo, math.ceil(demand / DOWN_BELOW - _EPS), 1 if busy else lo)
    if down == 0 and current > 1:
        down = 1  # to zero from one copy only, so that the delay counts from the last request
    if down >= current:
        return Decision(current, "Steady", f"{what}: {current} copies", None, value)
    low_since, waited = stabilised(inputs.now, inputs.low_since, inputs.last_change)
    if waited + _EPS >= policy.scale_down_delay_s and down == 0:
        return Decision(0, "ScaledToZero", f"copies {current} -> 0: no traffic for "
                        f"{waited:.0f} s (minReplicas 0)", None, value)  # fmt: skip
    if waited + _EPS >= policy.scale_down_delay_s:
        return Decision(down, "ScaledDown", f"copies {current} -> {down}: {what} for "
                        f"{waited:.0f} s", None, value)  # fmt: skip
    return Decision(current, "WaitingForScaleDown",
                    f"{what}: {down} copies would do; removing them after "
                    f"{policy.scale_down_delay_s:g} s of low load ({waited:.0f} s so far)",
                    low_since, value)  # fmt: skip


def stabilised(
    now: float, low_since: float | None, last_change: float | None
) -> tuple[float, float]:
    """(since when the load has been low: ``low_since``, else now; how long a scale-down
    has waited: since then and since the last change, the shorter). The stabilisation
    window of both autoscalers (copies, and the pool's pods)."""
    since = low_since if low_since is not None else now
    since_change = math.inf if last_change is None else now - last_change
    return since, min(now - since, since_change)


def _from_zero(inputs: Inputs, hi: int) -> Decision:
    """At zero copies (min is 0): one copy as soon as there is demand, else none."""
    waiting = inputs.demand_at_zero
    load = inputs.load
    if hi >= 1 and (waiting > 0 or (load is not None and load.has_traffic)):
        what = (f"{waiting} request(s) waiting at the gateway" if waiting
                else "requests reported by the runtimes")  # fmt: skip
        return Decision(1, "ScaledUp", f"copies 0 -> 1: from zero: {what}", None, None)
    return Decision(0, "ScaledToZero", "scaled to zero: no traffic; the first request "
                    "places a copy", None, None)  # fmt: skip


def sample(pods: list[PodView], key: Key) -> tuple[int, float, dict[str, int]]:
    """(requests in flight summed over the pods, the highest expected queue time (ms),
    each pod's count of requests answered or failed) of one version, as the pods report."""
    in_flight, queue_ms, counts = 0, 0.0, {}
    for pod in pods:
        seen = pod.observed().get(key)
        if seen is None:
            continue
        in_flight += seen.inflight
        queue_ms = max(queue_ms, seen.queue_wait_ms)
        counts[pod.name] = seen.served + seen.errors
    return in_flight, queue_ms, counts


class LoadWindow:
    """The samples of one version over the last ``LOAD_WINDOW_S`` (the operator keeps
    them in memory; after a restart the window fills again within seconds).

    The request rate comes from each pod's own counter: a copy that leaves takes its
    count with it without the rate (or the window) starting afresh, a copy that joins
    counts from zero, and a pod whose counter drops (it restarted) counts from zero again."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, float, int]] = deque()
        self._counts: dict[str, int] = {}
        self._total = 0

    def add(
        self, now: float, in_flight: int, queue_ms: float, counts: dict[str, int]
    ) -> Load | None:
        """Records a sample; the load over the window, or None until it holds two
        samples a second apart."""
        if self._samples:
            for pod, count in counts.items():
                before = self._counts.get(pod, 0)
                self._total += count - before if count >= before else count
        self._counts = dict(counts)
        self._samples.append((now, in_flight, queue_ms, self._total))
        while len(self._samples) > 2 and now - self._samples[0][0] > LOAD_WINDOW_S:
            self._samples.popleft()
        first = self._samples[0]
        span = now - first[0]
        if len(self._samples) < 2 or span < 1.0:
            return None
        n = len(self._samples)
        return Load(
            in_flight=round(sum(s[1] for s in self._samples) / n, 3),
            queue_ms=round(sum(s[2] for s in self._samples) / n, 3),
            request_rate=round((self._total - first[3]) / span, 3),
        )
