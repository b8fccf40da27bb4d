"""The canary analysis step machine: which step a canary is at, what weight it gets,
and what the operator does next (pure; ``reconcile`` reads and writes around it).

Everything it remembers lives in ``status.analysis`` (:meth:`State.as_status`,
:meth:`State.of_status`): the step, when it started, and both versions' cumulative
counters (answered plus failed requests, failed requests, summed over the pods as the
runtimes report them) at its start. A step's window is the difference between the
counters now and those, so a restarted operator resumes the same step from the status
without counting a request twice or starting over. A counter lower than at the step's
start (a pod restarted, a copy reloaded) restarts the step's window from the counters
now (its clock keeps running), so nothing is counted negative.

With ``analysis.shadow`` a shadow stage comes first (``State.stage`` ``shadow``): the
canary gets no client traffic while the gateways mirror it a share of the answered
requests (:func:`routed_spec` makes it the route's shadow) and compare its answers with
the primary's; the stage's window is the difference of the gateways' comparison
counters (:func:`mirrored`), kept in the status like the steps' counters. Enough
agreement begins step 1; too little fails the analysis.

Phases: ``Pending`` (the canary is not ready yet: it gets no traffic), ``Running`` (a
step, or the shadow stage, collects evidence), ``Holding`` (a step ran out of time without enough evidence:
it keeps its weight, goes on collecting, and never promotes without the evidence),
then one of ``Promoted`` (every step passed), ``RolledBack`` (a step failed: the
canary gets no traffic until its version or source changes) or ``Stopped`` (a person
changed ``spec.canary.weight``: the weight is theirs from then on).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Any, Literal

from modelfleet.operator.analysis import (
    Mirrored,
    ShadowThresholds,
    Thresholds,
    Window,
    judge,
    judge_shadow,
)
from modelfleet.operator.observed import Key, PodView
from modelfleet.operator.spec import Analysis, Canary, ModelSpec, Shadow

Phase = Literal["Pending", "Running", "Holding", "Promoted", "RolledBack", "Stopped"]
Stage = Literal["shadow", "canary"]
Action = Literal["none", "shadow", "start", "next", "promote", "rollback", "hold", "stop"]
ACTIVE: tuple[Phase, ...] = ("Pending", "Running", "Holding")
"""Phases in which the operator sets the canary's weight."""


@dataclass(frozen=True, slots=True)
class Counters:
    """One version's cumulative counters, summed over its pods."""

    requests: int
    """Answered plus failed requests."""
    errors: int
    """Failed requests."""

    def since(self, start: Counters) -> Counters:
        return Counters(self.requests - start.requests, self.errors - start.errors)

    def below(self, start: Counters) -> bool:
        """A counter went down since ``start``: a pod restarted or a copy reloaded."""
        return self.requests < start.requests or self.errors < start.errors


@dataclass(frozen=True, slots=True)
class Seen:
    """What a pass sees of both versions."""

    canary: Counters
    stable: Counters
    canary_p99_ms: float | None = None
    stable_p99_ms: float | None = None
    canary_ready: bool = True
    """At least one copy of the canary is loaded, warm and routable."""
    mirror: Counters | None = None
    """The gateways' comparisons of the canary's mirrored answers, summed (``requests``:
    judged, ``errors``: disagreeing or failed; :func:`mirrored`); None when not known
    this pass (no gateway answered)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The canary the analysis is about, and the weight the spec gave it when it began."""

    canary: str
    """``version`` and ``source`` of the canary: a change starts a new analysis."""
    spec_weight: int
    """``spec.canary.weight``: a change while the analysis runs is a manual override."""

    @classmethod
    def of(cls, canary: Canary) -> Identity:
        return cls(f"{canary.version} {canary.source.location}", canary.weight)


@dataclass(frozen=True, slots=True)
class State:
    """``status.analysis``: what the machine remembers between passes."""

    phase: Phase
    identity: Identity
    step: int
    """Index of the current step (0 is the first)."""
    weight: int
    """The canary weight routed now."""
    started: float
    """When the current step began (epoch seconds)."""
    canary_start: Counters
    stable_start: Counters
    reason: str = ""
    """The last verdict's reason (``AnalysisPassed: ...``, ``AnalysisWaiting: ...``)."""
    canary_window: Counters = Counters(0, 0)
    stable_window: Counters = Counters(0, 0)
    canary_p99_ms: float | None = None
    stable_p99_ms: float | None = None
    steps: int = 1
    """How many steps the analysis has (for people)."""
    stage: Stage = "canary"
    """``shadow``: the shadow stage before step 1 (``step`` is 0, ``weight`` 0);
    ``canary``: the steps."""
    mirror_start: Counters | None = None
    """The gateways' comparison counters when the shadow stage began (None until a
    gateway reported them: the first report starts the window)."""
    mirror_window: Counters = Counters(0, 0)
    """The shadow stage's mirrored requests so far: judged, and disagreeing or failed."""

    @property
    def summary(self) -> str:
        """The ``kubectl get im`` column: ``2/3 25%``, ``shadow``, or the phase when it
        is over."""
        if self.phase in ("Running", "Holding"):
            held = " holding" if self.phase == "Holding" else ""
            if self.stage == "shadow":
                return f"shadow{held}"
            return f"{self.step + 1}/{self.steps} {self.weight}%{held}"
        return self.phase

    def as_status(self) -> dict[str, Any]:
        """The ``status.analysis`` object (``statustypes.AnalysisStatus``)."""
        shadow = self.stage == "shadow"
        return {
            "phase": self.phase, "stage": "Shadow" if shadow else "Canary",
            "step": 0 if shadow else self.step + 1, "steps": self.steps,
            "weight": self.weight, "summary": self.summary, "reason": self.reason,
            "canary": self.identity.canary, "specWeight": self.identity.spec_weight,
            "stepStartTime": _iso(self.started),
            "canaryWindow": _window(self.canary_window, self.canary_p99_ms),
            "stableWindow": _window(self.stable_window, self.stable_p99_ms),
            "canaryStart": _start(self.canary_start), "stableStart": _start(self.stable_start),
            "shadowStart": _start(self.mirror_start) if self.mirror_start else None,
            "shadowWindow": _mirror_window(self.mirror_window) if self.mirror_start else None,
        }  # fmt: skip

    @classmethod
    def of_status(cls, data: object) -> State | None:
        """The state ``as_status`` wrote; None when there is none or it cannot be read."""
        if not isinstance(data, dict):
            return None
        try:
            started = _epoch(data["stepStartTime"])
            canary_start, stable_start = data["canaryStart"], data["stableStart"]
            stage: Stage = "shadow" if data.get("stage") == "Shadow" else "canary"
            mirror_start, window = data.get("shadowStart"), data.get("shadowWindow") or {}
            return cls(
                phase=data["phase"],
                identity=Identity(str(data["canary"]), int(data["specWeight"])),
                step=0 if stage == "shadow" else int(data["step"]) - 1,
                weight=int(data["weight"]),
                started=started,
                canary_start=Counters(int(canary_start["total"]), int(canary_start["failed"])),
                stable_start=Counters(int(stable_start["total"]), int(stable_start["failed"])),
                reason=str(data.get("reason") or ""),
                steps=int(data.get("steps") or 1),
                stage=stage,
                mirror_start=Counters(int(mirror_start["total"]), int(mirror_start["failed"]))
                if mirror_start else None,
                mirror_window=Counters(int(window.get("compared") or 0),
                                       int(window.get("disagreed") or 0)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    weight: int
    """The canary weight to route this pass."""
    action: Action
    """What changed this pass: ``none``, ``shadow`` (the shadow stage began), ``start``
    (the first step began), ``next`` (the shadow stage or a step passed, the next step
    began), ``promote``, ``rollback``, ``hold`` (the shadow stage or a step began
    holding) or ``stop`` (manual override)."""
    reason: str
    mirror: float | None = None
    """Percent of the answered requests mirrored to the canary this pass (the shadow
    stage); None: the canary is not mirrored to."""


def advance(
    spec: Analysis, canary: Canary, previous: State | None, seen: Seen, now: float
) -> Outcome:
    """The analysis after one more look at the counters (deterministic: the same
    inputs give the same outcome)."""
    identity = Identity.of(canary)
    steps = spec.steps
    if previous is None or previous.identity.canary != identity.canary:
        fresh = State("Pending", identity, 0, 0, now, seen.canary, seen.stable,
                      "AnalysisPending: waiting for the canary to be ready", steps=len(steps))  # fmt: skip
        if not seen.canary_ready:
            return Outcome(fresh, 0, "none", fresh.reason)
        return _begin(fresh, spec, seen, now)
    if previous.phase == "Promoted":
        return Outcome(previous, previous.weight, "none", previous.reason)
    if previous.identity.spec_weight != identity.spec_weight and previous.phase != "Stopped":
        why = (f"AnalysisStopped: spec.canary.weight changed from {previous.identity.spec_weight} "
               f"to {identity.spec_weight} by hand; the canary keeps that weight")  # fmt: skip
        stopped = replace(previous, phase="Stopped", identity=identity, weight=canary.weight,
                          reason=why)  # fmt: skip
        return Outcome(stopped, canary.weight, "stop", why)
    if previous.phase == "Stopped":
        return Outcome(replace(previous, weight=canary.weight), canary.weight, "none",
                       previous.reason)  # fmt: skip
    if previous.phase == "RolledBack":
        return Outcome(previous, 0, "none", previous.reason)
    if previous.phase == "Pending":
        if not seen.canary_ready:
            return Outcome(previous, 0, "none", previous.reason)
        return _begin(previous, spec, seen, now)
    if previous.stage == "shadow":
        return _judge_shadow(previous, spec, seen, now)
    return _judge(previous, spec, seen, now)


def _begin(state: State, spec: Analysis, seen: Seen, now: float) -> Outcome:
    """The canary is ready: the shadow stage begins (when the spec has one), else step 1."""
    if spec.shadow is None:
        return _first_step(state, spec, seen, now, "start", "AnalysisStep: step 1")
    stage = spec.shadow
    why = (f"AnalysisShadow: the canary gets no client traffic; {stage.percent:g}% of the "
           f"answered requests are mirrored to it until {stage.min_requests} are compared "
           f"(minAgreement {100 * stage.min_agreement:g}%), then step 1 begins")  # fmt: skip
    shadowing = replace(state, phase="Running", stage="shadow", step=0, weight=0, started=now,
                        canary_start=seen.canary, stable_start=seen.stable, reason=why,
                        steps=len(spec.steps), mirror_start=seen.mirror,
                        mirror_window=Counters(0, 0))  # fmt: skip
    return Outcome(shadowing, 0, "shadow", why, stage.percent)


def _first_step(
    state: State, spec: Analysis, seen: Seen, now: float, action: Action, what: str
) -> Outcome:
    """Step 1 begins: its window starts at the counters now (``what`` says why, and
    ends with "step 1")."""
    weight = spec.steps[0].weight
    why = f"{what} of {len(spec.steps)} began at weight {weight}%"
    running = replace(state, phase="Running", stage="canary", step=0, weight=weight,
                      started=now, canary_start=seen.canary, stable_start=seen.stable,
                      reason=why, steps=len(spec.steps), canary_window=Counters(0, 0),
                      stable_window=Counters(0, 0))  # fmt: skip
    return Outcome(running, weight, action, why)


def _judge_shadow(state: State, spec: Analysis, seen: Seen, now: float) -> Outcome:
    """The shadow stage (running or holding) judged on the mirrored requests so far; a
    pass without a gateway's report judges the window it had."""
    stage = spec.shadow
    if stage is None:
        return _first_step(state, spec, seen, now, "next",
                           "AnalysisStep: the shadow stage was removed from the spec; step 1")  # fmt: skip
    if seen.mirror is not None:
        start = state.mirror_start
        if start is None or seen.mirror.below(start):
            start = seen.mirror  # the first report, or a gateway restarted: the window restarts
        state = replace(state, mirror_start=start, mirror_window=seen.mirror.since(start))
    window = state.mirror_window
    limits = ShadowThresholds(stage.min_requests, stage.min_agreement, stage.max_seconds)
    verdict = judge_shadow(Mirrored(window.requests, window.errors), limits,
                           max(0.0, now - state.started))  # fmt: skip
    if verdict.kind == "failed":
        why = f"{verdict.reason} (shadow stage, before step 1)"
        return Outcome(replace(state, phase="RolledBack", reason=why), 0, "rollback", why)
    if verdict.kind == "passed":
        return _first_step(state, spec, seen, now, "next", f"{verdict.reason}; step 1")
    if verdict.kind == "holding":
        action: Action = "hold" if state.phase != "Holding" else "none"
        return Outcome(replace(state, phase="Holding", reason=verdict.reason), 0, action,
                       verdict.reason, stage.percent)  # fmt: skip
    return Outcome(replace(state, reason=verdict.reason), 0, "none", verdict.reason, stage.percent)


def _judge(state: State, spec: Analysis, seen: Seen, now: float) -> Outcome:
    """A running (or holding) step judged on its window so far."""
    index = min(state.step, len(spec.steps) - 1)
    step = spec.steps[index]
    state = replace(state, step=index, weight=step.weight, steps=len(spec.steps))
    if seen.canary.below(state.canary_start) or seen.stable.below(state.stable_start):
        state = replace(state, canary_start=seen.canary, stable_start=seen.stable)
    canary = seen.canary.since(state.canary_start)
    stable = seen.stable.since(state.stable_start)
    state = replace(state, canary_window=canary, stable_window=stable,
                    canary_p99_ms=seen.canary_p99_ms, stable_p99_ms=seen.stable_p99_ms)  # fmt: skip
    limits = Thresholds(step.min_requests, step.max_seconds, spec.max_error_rate_increase,
                        spec.max_p99_ratio, spec.alpha, spec.p99_tolerance_ms)  # fmt: skip
    verdict = judge(Window(canary.requests, canary.errors, seen.canary_p99_ms),
                    Window(stable.requests, stable.errors, seen.stable_p99_ms),
                    limits, max(0.0, now - state.started))  # fmt: skip
    where = f"step {index + 1} of {len(spec.steps)} at weight {step.weight}%"
    if verdict.kind == "failed":
        why = f"{verdict.reason} ({where})"
        return Outcome(replace(state, phase="RolledBack", weight=0, reason=why), 0, "rollback", why)
    if verdict.kind == "holding":
        action: Action = "hold" if state.phase != "Holding" else "none"
        return Outcome(replace(state, phase="Holding", reason=verdict.reason), step.weight,
                       action, verdict.reason)  # fmt: skip
    if verdict.kind == "waiting":
        return Outcome(replace(state, reason=verdict.reason), step.weight, "none", verdict.reason)
    if index + 1 == len(spec.steps):
        why = f"{verdict.reason} ({where}, the last)"
        return Outcome(replace(state, phase="Promoted", reason=why), step.weight, "promote", why)
    after = spec.steps[index + 1]
    why = f"{verdict.reason} ({where}); step {index + 2} at weight {after.weight}%"
    moved = replace(state, phase="Running", step=index + 1, weight=after.weight, started=now,
                    canary_start=seen.canary, stable_start=seen.stable, reason=why,
                    canary_window=Counters(0, 0), stable_window=Counters(0, 0))  # fmt: skip
    return Outcome(moved, after.weight, "next", why)


def _window(c: Counters, p99_ms: float | None) -> dict[str, Any]:
    # p99LatencyMs null when unmeasured: the merge patch drops an earlier step's figure.
    return {"requests": c.requests, "errors": c.errors, "p99LatencyMs": p99_ms,
            "errorRate": round(c.errors / c.requests, 4) if c.requests else 0.0}  # fmt: skip


def _mirror_window(c: Counters) -> dict[str, Any]:
    agreement = round(1 - c.errors / c.requests, 4) if c.requests else None
    return {"compared": c.requests, "disagreed": c.errors, "agreement": agreement}


def _start(c: Counters) -> dict[str, int]:
    # Not "requests"/"errors": status.comparable ignores those (live figures), and a
    # changed start must be written.
    return {"total": c.requests, "failed": c.errors}


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds")


def _epoch(text: object) -> float:
    if not isinstance(text, str):
        raise TypeError("stepStartTime is not a string")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def seen_on(pods: list[PodView], name: str, stable_version: str, canary_version: str) -> Seen:
    """Both versions' cumulative counters summed over the pods that report them, their
    highest p99, and whether the canary is ready somewhere."""
    canary, stable = (name, canary_version), (name, stable_version)
    totals = {canary: [0, 0], stable: [0, 0]}
    p99: dict[Key, float | None] = {canary: None, stable: None}
    for pod in pods:
        for key, seen in pod.observed().items():
            if key in totals:
                totals[key][0] += seen.served + seen.errors
                totals[key][1] += seen.errors
                if seen.p99_ms is not None:
                    p99[key] = max(p99[key] or 0.0, seen.p99_ms)
    return Seen(Counters(*totals[canary]), Counters(*totals[stable]), p99[canary], p99[stable],
                any(p.ready_for(canary) for p in pods))  # fmt: skip


def routed_spec(spec: ModelSpec, weight: int, mirror: float | None = None) -> ModelSpec:
    """The spec with the canary at ``weight`` (what the pass plans and routes with); with
    ``mirror`` (the shadow stage) the canary is the spec's shadow instead, mirrored that
    percent of the answered requests: the same copies (a shadow's entry in the pods'
    documents is a canary's), no client traffic."""
    c = spec.canary
    if c is None:
        return spec
    if mirror is not None:
        shadow = Shadow(version=c.version, source=c.source, percent=mirror, replicas=c.replicas)
        return spec.model_copy(update={"canary": None, "shadow": shadow})
    if c.weight == weight:
        return spec
    return spec.model_copy(update={"canary": c.model_copy(update={"weight": weight})})


def mirrored(summaries: list[dict[str, Any]], version: str) -> Counters | None:
    """The gateways' comparisons of ``version``'s mirrored answers (a ``/admin/shadow``
    summary from each gateway that answered, ``{}`` from one without any), summed:
    requests judged (answers compared on their arg-max, plus failed mirrors) and those
    that disagreed or failed. None when no gateway answered. A summary without
    ``judged``/``agreed`` (an older gateway) is read from its ``agreement``."""
    if not summaries:
        return None
    mine = [s for s in summaries if s.get("version") == version]
    judged = disagreed = 0
    for s in mine:
        failed = int(s.get("failed") or 0)
        if s.get("judged") is not None:
            n, agreed = int(s["judged"]), int(s.get("agreed") or 0)
        else:
            agreement = s.get("agreement")
            n = int(s.get("compared") or 0) if agreement is not None else 0
            agreed = round(float(agreement or 0) * n)
        judged += n + failed
        disagreed += n - agreed + failed
    return Counters(judged, disagreed)


def promotion(obj: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that promotes the canary the way a person does: version and
    source become the canary's and the canary is removed (stable replicas unchanged).
    ``resourceVersion`` makes it fail, rather than overwrite, an edit made meanwhile."""
    spec = obj["spec"]
    canary = spec["canary"]
    source: dict[str, Any] = dict.fromkeys(spec.get("source") or {})
    source.update(canary["source"])
    return {
        "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion")},
        "spec": {"version": canary["version"], "source": source, "canary": None},
    }
