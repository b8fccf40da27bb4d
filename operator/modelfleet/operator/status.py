"""Status of both resources, computed from a pass's reports (pure).

Conditions follow the Kubernetes convention: ``type``, ``status``, ``reason``
(CamelCase, stable), ``message`` (for people), ``lastTransitionTime`` (kept
while the status does not change), ``observedGeneration``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.operator.desired import ModelReport, VersionReport
from modelfleet.operator.observed import PodView

Rates = tuple[float, float, float]
"""Requests per second, error fraction, shed fraction (over the last minute)."""
"""(requests per second, fraction of them that failed) over the last window."""
CONDITION_TYPES = ("Ready", "Placed", "Degraded", "Progressing", "RolloutBlocked", "Analysis")


def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def with_times(
    new: list[dict[str, Any]], previous: list[dict[str, Any]], now: str, generation: int
) -> list[dict[str, Any]]:
    """Stamp ``lastTransitionTime``: kept from the previous condition of the same
    type while its status is unchanged, ``now`` when it flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"]
        stamp = old.get("lastTransitionTime", now) if same and old else now
        out.append({**cond, "lastTransitionTime": stamp, "observedGeneration": generation})
    return out


def _version_problem(v: VersionReport) -> str:
    parts = []
    if v.unplaced:
        parts.append(f"version {v.version} ({v.role}): {v.unplaced}")
    parts += [f"version {v.version} ({v.role}) failed on {f}" for f in v.failures]
    return "; ".join(parts)


def _names(versions: list[VersionReport]) -> str:
    return ", ".join(v.version for v in versions)


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a model's conditions are decided from."""

    stable: VersionReport
    ready_n: int
    """Ready replicas of the stable version."""
    unplaced: list[VersionReport]
    failed: list[VersionReport]
    loading: list[VersionReport]
    problems: str
    """Every version's placement and load problems, for people."""
    draining: list[VersionReport]
    old_serving: list[VersionReport]
    """Draining versions that still have traffic and a ready endpoint."""

    @classmethod
    def of(cls, report: ModelReport) -> _Facts:
        """The facts of one pass's report."""
        versions = report.versions
        draining = report.draining
        return cls(
            stable=report.stable,
            ready_n=len(report.stable.endpoints),
            unplaced=[v for v in versions if v.unplaced],
            failed=[v for v in versions if v.failures],
            loading=[v for v in versions if v.loading],
            problems="; ".join(p for p in (_version_problem(v) for v in versions) if p),
            draining=draining,
            old_serving=[v for v in draining if v.weight and v.endpoints],
        )

    @property
    def ready_summary(self) -> str:
        """``ready of wanted`` for the stable version, as people read it."""
        return f"{self.ready_n} of {self.stable.replicas} replicas ready"

    @property
    def waits_for_room(self) -> bool:
        """A rollout whose new stable version cannot be placed."""
        return bool(self.draining and self.stable.unplaced)


def model_conditions(report: ModelReport) -> list[dict[str, Any]]:
    facts = _Facts.of(report)
    placed = _placed(facts)
    blocked = _rollout_blocked(facts)
    return [_ready(facts), placed, _degraded(facts, placed), _progressing(facts, blocked), blocked,
            _memory(report)]  # fmt: skip


def _memory(report: ModelReport) -> dict[str, Any]:
    """MemoryOverDeclared: True while a version's device memory, as its pods measured it
    (weights plus the largest warm-up batch), exceeds its declared memoryMB: placement
    uses the measurement, and the declaration should be raised."""
    over = [v for v in report.versions if v.over_declared]
    if over:
        return condition("MemoryOverDeclared", True, "MeasuredOverDeclared", "; ".join(
            f"version {v.version}: measured {v.measured_mb:.0f} MB, memoryMB {v.declared_mb:g}"
            for v in over) + ": placement uses the measurement; raise memoryMB")  # fmt: skip
    measured = [v for v in report.versions if v.measured_mb is not None]
    if measured:
        return condition("MemoryOverDeclared", False, "WithinDeclared",
                         "measured device memory within memoryMB")  # fmt: skip
    return condition("MemoryOverDeclared", False, "NotMeasured",
                     "no pod has measured it (a CPU pool, or not warmed up yet)")  # fmt: skip


def _ready(f: _Facts) -> dict[str, Any]:
    """Ready while every stable replica is, or while a previous version serves a rollout."""
    stable = f.stable
    if stable.replicas == 0 and stable.enough == 0 and not f.old_serving:
        return condition("Ready", False, "ScaledToZero", "scaled to zero (autoscaling."
                         "minReplicas 0): no copy loaded; the gateways hold the next "
                         "request while a copy is placed and warmed")  # fmt: skip
    if f.ready_n >= stable.replicas:
        return condition("Ready", True, "AllReplicasReady", f.ready_summary)
    if stable.enough is not None and f.ready_n >= max(1, stable.enough):
        return condition("Ready", True, "MinReplicasReady",
                         f"{f.ready_summary} (autoscaling.minReplicas {stable.enough})")  # fmt: skip
    if f.old_serving:
        return condition("Ready", True, "PreviousVersionServing",
                         f"version {_names(f.old_serving)} serves while version {stable.version} "
                         f"rolls out ({f.ready_summary})")  # fmt: skip
    why = "Evicted" if stable.evicted else (
        "Unplaced" if stable.unplaced else "LoadFailed" if stable.failures else "Loading")  # fmt: skip
    return condition(
        "Ready", False, why, f.ready_summary + (f": {f.problems}" if f.problems else "")
    )


def _placed(f: _Facts) -> dict[str, Any]:
    """Placed when every replica of every version is; evicted or short of room otherwise."""
    if not f.unplaced:
        return condition("Placed", True, "Placed", "every replica of every version is placed")
    evicted = any(v.evicted for v in f.unplaced)
    return condition("Placed", False, "Evicted" if evicted else "DoesNotFit",
                     "; ".join(_version_problem(v) for v in f.unplaced))  # fmt: skip


def _degraded(f: _Facts, placed: dict[str, Any]) -> dict[str, Any]:
    """Degraded by a failed load, else by a version short of its replicas."""
    if f.failed:
        return condition("Degraded", True, "LoadFailed", f.problems)
    if f.unplaced:
        return condition("Degraded", True, placed["reason"], f.problems)
    return condition("Degraded", False, "AsExpected", "no problem seen")


def _rollout_blocked(f: _Facts) -> dict[str, Any]:
    """Blocked while the new stable version has no room and the old one keeps serving."""
    if not f.waits_for_room:
        return condition("RolloutBlocked", False, "NotBlocked", "no rollout is waiting for room")
    return condition("RolloutBlocked", True, "InsufficientMemory",
                     f"version {f.stable.version} cannot be placed: {f.stable.unplaced}; "
                     f"version {_names(f.draining)} keeps serving")  # fmt: skip


def _progressing(f: _Facts, blocked: dict[str, Any]) -> dict[str, Any]:
    """How far a rollout, else the loading of placed replicas, has come."""
    stable = f.stable
    if f.waits_for_room:
        return condition("Progressing", False, "RolloutBlocked", blocked["message"])
    if f.draining and stable.failures:
        return condition("Progressing", False, "RolloutFailed",
                         f"{f.problems}; version {_names(f.draining)} keeps serving")  # fmt: skip
    if f.old_serving:
        where = ", ".join(stable.loading) or "its pods"
        return condition("Progressing", True, "RolloutLoading",
                         f"version {stable.version} loading and warming on {where}; "
                         f"version {_names(f.old_serving)} keeps the traffic")  # fmt: skip
    if f.draining:
        return condition("Progressing", True, "RolloutDraining",
                         f"traffic moved to version {stable.version}; version "
                         f"{_names(f.draining)} draining, unloaded next")  # fmt: skip
    if f.loading:
        names = ", ".join(f"version {v.version} on {', '.join(v.loading)}" for v in f.loading)
        return condition("Progressing", True, "Loading", f"loading and warming: {names}")
    return condition("Progressing", False, "Converged" if not (f.failed or f.unplaced)
                     else "Stalled", f.problems or "every placed replica is ready")  # fmt: skip


def analysis_condition(phase: str, verdict: str) -> dict[str, Any]:
    """The ``Analysis`` condition of a model under canary analysis, from its phase and its
    last verdict (``AnalysisWaiting: 37 of 200 canary requests``): reason the verdict's
    first word, message the rest. True once promoted, False once rolled back, Unknown
    while the evidence is awaited (pending, shadow stage, waiting, holding) or stopped."""
    reason, _, message = verdict.partition(": ")
    if not reason.isalnum():
        reason, message = f"Analysis{phase}", verdict
    status = {"Promoted": "True", "RolledBack": "False"}.get(phase, "Unknown")
    return {"type": "Analysis", "status": status, "reason": reason,
            "message": message or f"canary analysis {phase.lower()}"}  # fmt: skip


def unknown_pool_conditions(pool: str) -> list[dict[str, Any]]:
    message = f"InferencePool '{pool}' does not exist in this namespace; create it or fix spec.pool"
    return [
        condition("Ready", False, "UnknownPool", message),
        condition("Placed", False, "UnknownPool", message),
        condition("Degraded", True, "UnknownPool", message),
        condition("Progressing", False, "UnknownPool", message),
        condition("RolloutBlocked", False, "NotBlocked", "no rollout is waiting for room"),
    ]


def version_status(
    v: VersionReport, rates: Rates | None = None, attainment: float | None = None
) -> dict[str, Any]:
    out = {
        "version": v.version, "role": v.role, "weight": v.routed_weight, "replicas": v.replicas,
        "readyReplicas": len(v.endpoints), "pods": v.pods, "endpoints": v.endpoints,
        "memoryMB": v.memory_mb, "requests": v.requests, "errors": v.errors,
    }  # fmt: skip
    if v.declared_mb is not None:
        out["declaredMemoryMB"] = v.declared_mb
    if v.measured_mb is not None:
        out["measuredMemoryMB"] = v.measured_mb
    if v.p99_ms is not None:
        out["p99LatencyMs"] = v.p99_ms
    if rates is not None:
        out["requestRate"], out["errorRate"], out["shedRate"] = rates
    if attainment is not None:
        out["objectiveAttainment"] = attainment
    return out


def model_status(
    report: ModelReport, url: str, previous: dict[str, Any], generation: int, now: str,
    rates: dict[str, Rates] | None = None, attainment: dict[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The InferenceModel's status after a pass. An eviction is seen in the pass
    that makes it; later passes only see a version that does not fit, so the
    name of the winner is kept (``evictedBy``) while the version stays unplaced."""
    earlier: dict[str, str] = dict(previous.get("evictedBy") or {})
    evicted_by: dict[str, str] = {}
    for v in report.versions:
        if not v.unplaced:
            continue
        if v.evicted_by is not None:
            evicted_by[v.version] = v.unplaced
        elif v.version in earlier:
            evicted_by[v.version] = v.unplaced = earlier[v.version]
            v.evicted_earlier = True
    conditions = with_times(
        model_conditions(report), previous.get("conditions") or [], now, generation
    )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "url": url,
        "readyReplicas": len(report.stable.endpoints),
        "versions": [
            version_status(v, (rates or {}).get(v.version), (attainment or {}).get(v.version))
            for v in report.versions
        ],
        "conditions": conditions,
        # A merge patch removes a key only when told so with null.
        "evictedBy": {**dict.fromkeys(earlier), **evicted_by},
    }
    degraded = next(c for c in conditions if c["type"] == "Degraded")
    if degraded["status"] == "True":
        last = previous.get("lastFailure") or {}
        same = last.get("message") == degraded["message"]
        status["lastFailure"] = {"reason": degraded["reason"], "message": degraded["message"],
                                 "time": last.get("time", now) if same else now}  # fmt: skip
    return status


def pool_status(
    pods: list[PodView], unreachable: list[str], reports: dict[str, ModelReport],
    previous: dict[str, Any], generation: int, now: str,
) -> dict[str, Any]:  # fmt: skip
    reachable = [p for p in pods if p.reachable]
    problems = {name: r for name, r in reports.items()
                if any(v.unplaced or v.failures for v in r.versions)}  # fmt: skip
    loading = any(v.loading for r in reports.values() for v in r.versions)
    ok = bool(reachable) and not unreachable
    conditions = [
        condition("Ready", ok, "PodsAnswering" if ok else "PodsNotAnswering",
                  f"{len(reachable)} runtime pod(s) answering" + (
                      f"; not answering: {', '.join(unreachable)}" if unreachable else "")),
        condition("Placed", not any(v.unplaced for r in reports.values() for v in r.versions),
                  "Placed", f"{len(reports)} model(s) on {len(pods)} pod(s)"),
        condition("Degraded", bool(problems or unreachable),
                  "ModelsDegraded" if problems else ("PodsNotAnswering" if unreachable else "AsExpected"),
                  ", ".join(sorted(problems)) + " degraded" if problems else "no problem seen"),
        condition("Progressing", loading, "Loading" if loading else "Converged",
                  "models loading" if loading else "every placed replica is ready"),
    ]  # fmt: skip
    return {
        "observedGeneration": generation,
        "readyReplicas": len(reachable),
        "models": len(reports),
        "pods": [{"name": p.name, "ip": p.ip, "answering": p.reachable,
                  "models": [f"{n}:{v}" for n, v in sorted(p.hosting())],
                  "memoryInUseMB": p.state.actual.memory_in_use_mb if p.state else 0,
                  **p.restarts.status()}
                 for p in pods],
        "conditions": with_times(conditions, previous.get("conditions") or [], now, generation),
    }  # fmt: skip


VOLATILE = (
    "lastTransitionTime",
    "time",
    "memoryInUseMB",
    "requests",
    "errors",
    "requestRate",
    "errorRate",
    "shedRate",
    "objectiveAttainment",
    "p99LatencyMs",
    "load",
    "detail",
    "compared",
    "skipped",
    "agreement",
    "worstAbsDiff",
    "worstRelDiff",
)


def comparable(status: dict[str, Any]) -> Any:
    """A status without its volatile figures: a patch is sent only when this changes
    (request counters and memory ride along with the next real change)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(status)


def shadow_status(version: str, percent: float, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """``status.shadow``: the gateways' comparisons of ``version``'s answers with the
    primary's, summed over the gateways (agreement weighted by the requests compared;
    the worst differences are the largest any gateway saw). A gateway's figures count
    from its start (a restarted gateway starts again from zero)."""
    mine = [s for s in summaries if s.get("version") == version]
    compared = sum(int(s.get("compared") or 0) for s in mine)
    out: dict[str, Any] = {
        "version": version, "percent": percent, "compared": compared,
        "failed": sum(int(s.get("failed") or 0) for s in mine),
        "skipped": sum(int(s.get("skipped") or 0) for s in mine),
    }  # fmt: skip
    agreeing = [(float(s["agreement"]), int(s.get("compared") or 0)) for s in mine
                if s.get("agreement") is not None]  # fmt: skip
    weight = sum(n for _, n in agreeing)
    if agreeing:
        mean = sum(a * n for a, n in agreeing) / weight if weight else agreeing[0][0]
        out["agreement"] = round(mean, 4)
    for key, field in (("worst_abs_diff", "worstAbsDiff"), ("worst_rel_diff", "worstRelDiff")):
        seen = [float(s[key]) for s in mine if s.get(key) is not None]
        if seen:
            out[field] = max(seen)
    return out
