"""The status both resources declare, field by field (the source of the CRDs' status schemas).

``status.py`` computes the documents these models describe; the API server prunes
whatever the schema does not declare, so every field it writes is declared here
(tests/operator/test_crds.py checks that).
The operator writes status and never parses it, so nothing here has a default the
API server would store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelfleet.operator.markers import Int64, k8s
from modelfleet.operator.spec import Role


class _Status(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, frozen=True, alias_generator=to_camel, use_attribute_docstrings=True
    )


class Condition(_Status):
    """One condition."""

    type: str
    """The condition's type."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str | None = None
    """Machine-readable CamelCase reason."""
    message: str | None = None
    """What happened, for people."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: Int64 | None = None
    """The generation the condition describes."""


class ModelCondition(Condition):
    """One condition."""

    type: str
    """Ready, Placed, Degraded, Progressing, RolloutBlocked, MemoryOverDeclared or Analysis."""


class PoolCondition(Condition):
    """One condition."""

    type: str
    """Ready, Placed, Degraded or Progressing."""


class VersionStatus(_Status):
    """One version."""

    version: str | None = None
    """Version label."""
    role: Role | None = None
    """stable, canary, draining (leaving after a rollout) or shadow (mirrored to only)."""
    weight: int | None = None
    """Share of the traffic routed to this version: the spec's percent, or during a
    rollout the old version's share until the new one is ready everywhere."""
    replicas: int | None = None
    """Copies wanted."""
    ready_replicas: int | None = None
    """Copies loaded, warm and routed to."""
    pods: tuple[str, ...] | None = None
    """Pool pods the version is placed on."""
    endpoints: tuple[str, ...] | None = None
    """Data URLs the gateway routes this version to."""
    memory_mb: float | None = Field(default=None, alias="memoryMB")
    """Device memory one copy is placed with: measuredMemoryMB once known, else the
    declared memoryMB (else what the runtime accounts, else the default)."""
    declared_memory_mb: float | None = Field(default=None, alias="declaredMemoryMB")
    """memoryMB as the spec declares it."""
    measured_memory_mb: float | None = Field(default=None, alias="measuredMemoryMB")
    """Device memory as its pods measured it (weights plus the largest warm-up batch's
    peak working memory; only on a device that measures, CUDA)."""
    requests: Int64 | None = None
    """Requests answered, summed over the pods."""
    errors: Int64 | None = None
    """Requests that failed, summed over the pods."""
    request_rate: float | None = None
    """Requests per second over the last minute, summed over the pods."""
    error_rate: float | None = None
    """Fraction of those requests that failed (0 to 1) over the last minute."""
    shed_rate: float | None = None
    """Fraction of those requests that the runtimes' admission refused or dropped under
    overload (queue full, deadline out of reach, rate limit, displaced by a higher
    priority, expired in the queue), over the last minute; counted in errorRate too."""
    objective_attainment: float | None = None
    """Fraction of the answered requests (0 to 1) that met the model's
    latencyObjectiveMs in the runtime over the last minute; only with an objective."""
    p99_latency_ms: float | None = None
    """p99 latency in the runtime over the last minute (the highest of its pods), in milliseconds."""


class Failure(_Status):
    """The most recent problem seen."""

    reason: str | None = None
    """Machine-readable reason."""
    message: str | None = None
    """What went wrong."""
    time: datetime | None = None
    """When it was first seen."""


_BY_TYPE = k8s(map_keys=["type"])
"""Conditions are a map keyed by type: one condition of each type."""


class CanaryAutoscalingStatus(_Status):
    """The canary scales on its own share: the same rule on its own load, from one copy
    up to maxReplicas."""

    version: str | None = None
    """The canary version decided on."""
    desired_replicas: int | None = None
    """Copies of the canary the autoscaler wants."""
    reason: str | None = None
    """ScaledUp, ScaledDown, Steady, WaitingForScaleDown, Clamped or NoLoadSample."""
    detail: str | None = None
    """The decision with its figures, for people."""
    load: float | None = None
    """The canary's load it decided on (as for the stable version)."""
    last_scale_time: datetime | None = None
    """When the canary's copies last changed."""
    low_since: datetime | None = None
    """Since when the canary's load has been low enough to remove copies."""


class AutoscalingStatus(_Status):
    """What the built-in autoscaler decided last (only with spec.autoscaling)."""

    desired_replicas: int | None = None
    """Copies of the stable version the autoscaler wants."""
    reason: str | None = None
    """Why: ScaledUp, ScaledDown, ScaledToZero (at zero copies, minReplicas 0), Steady,
    WaitingForScaleDown, Clamped or NoLoadSample."""
    detail: str | None = None
    """The decision with its figures, for people (refreshed with the live figures)."""
    load: float | None = None
    """The load it decided on: requests in flight summed over the copies, or the
    highest queue time of the copies (ms), whichever the target names."""
    last_scale_time: datetime | None = None
    """When the autoscaler last changed the copies (the scale-down delay counts from it)."""
    low_since: datetime | None = None
    """Since when the load has been low enough to remove copies (absent while it is not)."""
    blocked: str | None = None
    """Why copies the autoscaler wants are not placed (absent when all are)."""
    canary: CanaryAutoscalingStatus | None = None
    """The canary's copies, decided on its own load (only while spec.canary is set)."""


class AnalysisWindow(_Status):
    """One version's figures over the current step's window (since the step began)."""

    requests: Int64 | None = None
    """Requests answered or failed in the window, summed over the pods."""
    errors: Int64 | None = None
    """Requests that failed in the window."""
    error_rate: float | None = None
    """errors / requests (0 to 1)."""
    p99_latency_ms: float | None = None
    """p99 latency in the runtime over the last minute (the highest of its pods), in ms."""


class AnalysisStart(_Status):
    """One version's cumulative counters, summed over its pods, when the step began."""

    total: Int64 | None = None
    """Requests answered or failed."""
    failed: Int64 | None = None
    """Requests that failed."""


class ShadowWindow(_Status):
    """The canary's mirrored requests since the shadow stage began."""

    compared: Int64 | None = None
    """Mirrored requests judged: answers compared on their arg-max, plus failed mirrors."""
    disagreed: Int64 | None = None
    """Of those, answers whose arg-max differed from the primary's, plus failed mirrors."""
    agreement: float | None = None
    """1 - disagreed / compared (0 to 1); the stage needs minAgreement."""


class AnalysisStatus(_Status):
    """The automated canary analysis (only with spec.canary.analysis)."""

    phase: Literal["Pending", "Running", "Holding", "Promoted", "RolledBack", "Stopped"] | None = (
        None
    )
    """Pending (the canary is not ready yet), Running (the shadow stage or a step collects
    evidence), Holding (the shadow stage or a step ran out of time without enough
    requests: it keeps its weight, and neither begins step 1 nor promotes), Promoted,
    RolledBack (a check failed: the canary gets no traffic until its version or source
    changes) or Stopped (spec.canary.weight was edited by hand)."""
    stage: Literal["Shadow", "Canary"] | None = None
    """Shadow: the shadow stage before step 1 (the canary is only mirrored to, weight 0;
    with canary.analysis.shadow); Canary: the weight steps."""
    step: int | None = None
    """The current step, counted from 1 (0 during the shadow stage)."""
    steps: int | None = None
    """How many steps the analysis has."""
    weight: int | None = None
    """The canary's weight now (percent)."""
    summary: str | None = None
    """The step and weight (2/3 25%), or the phase once it is over (kubectl get im)."""
    reason: str | None = None
    """The last verdict, with its figures: AnalysisShadow, AnalysisStep, AnalysisPassed,
    AnalysisWaiting, AnalysisHolding, AnalysisFailed or AnalysisStopped (also the
    Analysis condition's reason and message)."""
    canary: str | None = None
    """The canary's version and source the analysis is about."""
    spec_weight: int | None = None
    """spec.canary.weight when the analysis began: a change stops the automation."""
    step_start_time: datetime | None = None
    """When the current step began."""
    canary_window: AnalysisWindow | None = None
    """The canary's figures since the step began."""
    stable_window: AnalysisWindow | None = None
    """The stable version's figures since the step began."""
    canary_start: AnalysisStart | None = None
    """The canary's counters when the step began (a restarted operator resumes from them)."""
    stable_start: AnalysisStart | None = None
    """The stable version's counters when the step began."""
    shadow_start: AnalysisStart | None = None
    """The gateways' comparison counters of the canary when the shadow stage began (total:
    mirrored requests judged; failed: those that disagreed or failed)."""
    shadow_window: ShadowWindow | None = None
    """The canary's mirrored requests since the shadow stage began (kept after it)."""


class ShadowStatus(_Status):
    """The shadow version's answers compared with the primary's (only with spec.shadow)."""

    version: str | None = None
    """The shadow's version label."""
    percent: float | None = None
    """Percent of the answered requests mirrored to it."""
    compared: Int64 | None = None
    """Mirrored requests whose answers were compared, summed over the gateways."""
    failed: Int64 | None = None
    """Mirrored requests the shadow failed (error or timeout)."""
    skipped: Int64 | None = None
    """Requests not mirrored (the shadow's share of concurrency was in use)."""
    agreement: float | None = None
    """Share (0 to 1) of the compared answers whose arg-max agrees with the primary's."""
    worst_abs_diff: float | None = None
    """Largest absolute difference seen between a shadow and a primary output value."""
    worst_rel_diff: float | None = None
    """Largest relative difference seen between a shadow and a primary output value."""


class ModelStatus(_Status):
    """What the operator observed; written once per convergence pass."""

    observed_generation: Int64 | None = None
    """The spec generation this status describes."""
    url: str | None = None
    """The in-cluster URL of the model's infer endpoint."""
    ready_replicas: int | None = None
    """Replicas of the stable version loaded, warm and routed to (the scale subresource's
    status.replicas)."""
    desired_replicas: int | None = None
    """Copies of the stable version the operator places: spec.replicas, or the
    autoscaler's decision."""
    selector: str | None = None
    """Label selector of the pool's runtime pods (the scale subresource's selector, which
    an HorizontalPodAutoscaler requires)."""
    autoscaling: AutoscalingStatus | None = None
    """What the built-in autoscaler decided last (only with spec.autoscaling)."""
    analysis: AnalysisStatus | None = None
    """The automated canary analysis (only with spec.canary.analysis)."""
    shadow: ShadowStatus | None = None
    """The shadow version's answers compared with the primary's (only with spec.shadow)."""
    versions: tuple[VersionStatus, ...] | None = None
    """Every version the model runs, with its role."""
    conditions: tuple[ModelCondition, ...] | None = Field(default=None, json_schema_extra=_BY_TYPE)
    """Ready (reason ScaledToZero, status False, while autoscaling has unloaded every
    copy), Placed, Degraded, Progressing (reasons Loading, RolloutLoading,
    RolloutDraining, RolloutBlocked, RolloutFailed, Converged, Stalled),
    RolloutBlocked (reason InsufficientMemory when a new version finds no room) and,
    with spec.canary.analysis, Analysis (status.analysis' last verdict as reason and
    message: AnalysisPending, AnalysisShadow, AnalysisStep, AnalysisWaiting,
    AnalysisHolding, AnalysisPassed, AnalysisFailed or AnalysisStopped; status Unknown
    while it runs or once stopped, True once promoted, False once rolled back), each
    with a reason and a message."""
    evicted_by: dict[str, str] | None = None
    """Versions evicted by a higher-priority model, with the message naming it."""
    last_failure: Failure | None = None
    """The most recent problem seen."""


class Termination(_Status):
    """How a container last ended, as the kubelet reports it."""

    reason: str | None = None
    """OOMKilled (out of memory), Error, Completed, or the kubelet's other reasons."""
    exit_code: int | None = None
    """The container's exit code (137: killed, for example for memory or a failed liveness probe)."""
    finished_at: datetime | None = None
    """When it ended."""


class PodStatus(_Status):
    """One runtime pod."""

    name: str | None = None
    """Pod name."""
    ip: str | None = None
    """Pod IP."""
    answering: bool | None = None
    """Whether its admin API answered in the last pass."""
    models: tuple[str, ...] | None = None
    """Versions placed on it, as model:version."""
    memory_in_use_mb: float | None = Field(default=None, alias="memoryInUseMB")
    """Device memory its models use, as it reports."""
    restarts: int | None = None
    """Restarts of its runtime container, as the kubelet counts them."""
    last_termination: Termination | None = None
    """How its runtime container last ended (absent until it has ended once)."""


class PoolScalingStatus(_Status):
    """The pool's size as the operator decided it last (only when replicas.max > min)."""

    desired_pods: int | None = None
    """Runtime pods the models' copies call for now, within replicas.min..max."""
    current_pods: int | None = None
    """The StatefulSet's replicas (it shrinks only once the pods past desiredPods are drained)."""
    ready_pods: int | None = None
    """Runtime pods answering, not counting those being drained."""
    needed_pods: int | None = None
    """The fewest pods that hold every copy the models want (absent: more than max)."""
    reason: str | None = None
    """ScaledUp, ScaledDown, Steady, WaitingForScaleDown, ScaleBlocked or Clamped."""
    detail: str | None = None
    """The decision with its figures, for people."""
    draining: tuple[str, ...] | None = None
    """Pods being drained before the pool shrinks: their copies move to the others."""
    last_scale_time: datetime | None = None
    """When the StatefulSet's replicas last changed (the scale-down delay counts from it)."""
    low_since: datetime | None = None
    """Since when the copies have fit on fewer pods (absent while they do not)."""


class PoolStatus(_Status):
    """What the operator observed; written once per convergence pass."""

    observed_generation: Int64 | None = None
    """The spec generation this status describes."""
    ready_replicas: int | None = None
    """Runtime pods answering the operator's admin API."""
    models: int | None = None
    """InferenceModels naming this pool."""
    pods: tuple[PodStatus, ...] | None = None
    """Each runtime pod and the versions it hosts."""
    conditions: tuple[PoolCondition, ...] | None = Field(default=None, json_schema_extra=_BY_TYPE)
    """Ready, Placed, Degraded and Progressing, each with a reason and a message."""
    scaling: PoolScalingStatus | None = None
    """The pool's size: desired, current and ready pods, and why."""
