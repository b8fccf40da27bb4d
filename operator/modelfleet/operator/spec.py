"""Typed views of the resources' specs, parsed at the edge, and the source of the CRDs.

The API server validates and defaults what it stores with the CRD schema, and
``crdgen`` writes that schema from these models: types, defaults, ranges, patterns
and enums are pydantic's keywords, each field's docstring is its description
(``kubectl explain``), and ``markers.k8s`` adds the CEL rules and list types. The
models use camelCase aliases so that nothing downstream handles raw dicts, and
defaults so that a spec written before a default existed still parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelfleet.api import runtime_document as rd
from modelfleet.operator.markers import Rule, k8s

GROUP, VERSION = "modelfleet.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_MEMORY_MB = 1000.0
"""Memory assumed for a version that declares none and has not been measured yet."""

Role = Literal["stable", "canary", "draining", "shadow"]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
    "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
"""The OIP datatypes the CRD's enum allows (the runtime's ``TensorSpec.datatype``)."""
VersionLabel = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
]
"""A version label, as it appears in /v2/models/<name>/versions/<version>."""
TensorName = Annotated[str, Field(min_length=1, max_length=128)]


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        alias_generator=to_camel,
        use_attribute_docstrings=True,
    )


class Tensor(_Spec):
    """One tensor."""

    name: TensorName
    """Tensor name as clients send it."""
    datatype: Datatype
    """Open Inference Protocol datatype (BYTES for strings and raw bytes)."""
    shape: tuple[Annotated[int, Field(ge=-1)], ...] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=k8s(list_type="atomic", rules=[
            Rule("self.all(d, d != 0)", "shape dimensions must be positive or -1")]),
    )  # fmt: skip
    """Shape including the batch dimension; -1 marks a variable dimension."""


Tensors = Annotated[
    tuple[Tensor, ...], Field(min_length=1, max_length=64, json_schema_extra=k8s(map_keys=["name"]))
]
"""Tensors keyed by name (a second tensor of one name is refused)."""


class Source(_Spec):
    """Where the model file comes from and how to load it."""

    model_config = ConfigDict(json_schema_extra=k8s(rules=[
        Rule("has(self.path) != has(self.url)", "give exactly one of source.path or source.url"),
        Rule("!has(self.url) || has(self.sha256)", "source.url needs source.sha256",
             field_path=".sha256", reason="FieldValueRequired"),
        Rule("self.format != 'torchscript' || self.trusted",
             "source.format torchscript runs code: set source.trusted: true to allow it",
             field_path=".trusted"),
        Rule("has(self.architecture) || self.format in ['export', 'torchscript'] || "
             "(self.format == 'auto' && (has(self.path) ? self.path : (has(self.url) ? self.url : ''))"
             ".matches('[.](pt2|ts)$'))",
             "source.architecture (package.module:factory) is needed for safetensors and "
             "state-dict files", field_path=".architecture", reason="FieldValueRequired"),
    ]))  # fmt: skip

    path: str | None = Field(default=None, min_length=1, max_length=1024)
    """A file (or directory) in the pool's model store, relative to its root."""
    url: str | None = Field(default=None, max_length=2048, pattern="^https?://")
    """An http(s) URL of the model file; needs sha256."""
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    """The file's SHA-256 (hex); the runtime checks it before loading anything."""
    format: Literal["auto", "safetensors", "state_dict", "export", "torchscript"] = "auto"
    """File format. auto decides by extension (.safetensors, .pt/.pth state dict,
    .pt2 torch.export archive, .ts TorchScript)."""
    architecture: str | None = Field(
        default=None, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
    )
    """package.module:factory that builds the module, for safetensors and state dicts."""
    trusted: bool = False
    """TorchScript runs arbitrary code; it is only loaded when this is true."""

    @property
    def location(self) -> str:
        return self.path or self.url or ""


class Padding(_Spec):
    """Padding of variable-length inputs to bucket lengths."""

    inputs: dict[str, Annotated[float, Field(description="The value the padding holds.")]] = Field(
        min_length=1, max_length=64
    )
    """Input name to the value its padding holds (token ids 0, attention mask 0).
    Each input named needs a variable (-1) dimension at axis, and a request's
    inputs named here must agree on their length along it."""
    axis: int = Field(default=1, ge=1, le=15)
    """The padded dimension (1 is the sequence dimension of [batch, seq, ...])."""
    buckets: tuple[Annotated[int, Field(ge=1, description="A length to pad to.")], ...] = Field(
        min_length=1,
        max_length=64,
        json_schema_extra=k8s(list_type="atomic", rules=[
            Rule("self.isSorted() && self.all(b, self.indexOf(b) == self.lastIndexOf(b))",
                 "batching.pad.buckets must be strictly increasing, e.g. [32, 64, 128]")]),
    )  # fmt: skip
    """Strictly increasing lengths to pad to. A request goes to the smallest bucket
    that holds it and shares a batch only with requests of the same bucket; a
    request longer than the largest bucket is refused with 400."""
    outputs: tuple[Annotated[TensorName, Field(description="An output name.")], ...] = Field(
        default=(), max_length=64, json_schema_extra=k8s(list_type="set")
    )
    """Outputs with a sequence dimension at axis (per-token states): each request
    gets them sliced back to its own length."""


class Batching(_Spec):
    """Dynamic batching of requests into one forward pass."""

    max_batch_size: int = Field(default=16, ge=1, le=4096)
    """Largest batch (rows along dimension 0)."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    """Longest the oldest request waits for a batch to fill."""
    pad: Padding | None = None
    """Pad variable-length inputs to a bucket length so that requests of different
    lengths share a batch (sequence models: token ids and their attention mask).
    Without it a batch only holds requests whose dimensions other than the batch
    one all agree; requests of another shape wait for a batch of their own."""


class Queue(_Spec):
    """Admission of requests waiting for this model."""

    max_size: int = Field(default=256, ge=1, le=1_000_000)
    """Requests queued beyond this are refused with 503."""
    timeout_ms: float = Field(default=30_000, ge=1)
    """Default request deadline (a request's timeout parameter can only shorten it)."""


class RateLimit(_Spec):
    """Token bucket per runtime pod; requests over it get 429 with Retry-After."""

    requests_per_second: float = Field(gt=0)
    """Sustained rate."""
    burst: int = Field(default=0, ge=0, json_schema_extra=k8s(default=None))
    """Bucket size; 0 means one second's worth."""


class Cache(_Spec):
    """Result cache for repeated identical inputs."""

    enabled: bool = False
    """Serve outputs of identical inputs from the cache."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0, json_schema_extra=k8s(default=None))
    """Bound on cached output bytes per pod."""


class Warmup(_Spec):
    """Warm-up before a version reports ready; no version receives a request before it is warm."""

    enabled: bool = True
    """Run warm-up batches before the version is ready."""
    data: Literal["zero", "random"] = "zero"
    """Input data of the warm-up batches."""


class AnalysisStep(_Spec):
    """One step of a canary analysis: a traffic share and the evidence it needs."""

    weight: int = Field(ge=1, le=100)
    """Percent (1-100) of the model's traffic sent to the canary during the step."""
    min_requests: int = Field(default=100, ge=1, le=100_000_000)
    """Canary requests (answered or failed) the step needs before it can pass or fail."""
    max_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long the step waits for minRequests; after that the analysis holds (it keeps
    the step's weight and never promotes without the evidence)."""


class ShadowStage(_Spec):
    """A shadow stage before the first canary step: the canary gets no client traffic while
    the gateways mirror it a share of the answered requests and compare its answers with
    the primary's (as spec.shadow does); step 1 begins only once minRequests compared
    answers agree with at least minAgreement."""

    min_requests: int = Field(default=100, ge=1, le=100_000_000)
    """Mirrored requests judged (answers compared on their arg-max, plus mirrors the canary
    failed, which count as disagreeing) before the stage can pass or fail."""
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    """Share (0 to 1) of those whose arg-max must agree with the primary's answer: the
    stage passes at or above it and fails the analysis below it (rolled back, no client
    traffic). Only outputs with a last dimension over 1 (scores, logits) or BYTES are
    judged: a model without such an output never completes the stage."""
    percent: float = Field(default=10, gt=0, le=100)
    """Percent of the model's answered requests mirrored to the canary during the stage
    (at most 8 mirrors a model at once at each gateway; the rest are skipped)."""
    max_seconds: int = Field(default=600, ge=1, le=86_400)
    """How long the stage waits for minRequests; after that the analysis holds (the canary
    stays a shadow, with no client traffic, and step 1 never begins without the evidence)."""


class Analysis(_Spec):
    """Automated canary analysis: the operator walks the steps' weights by itself, judging
    the canary against the stable version over each step's requests, promotes the canary
    after the last step and routes it no traffic at the first failed check."""

    shadow: ShadowStage | None = None
    """A required shadow stage before step 1: the canary is only mirrored to (no client
    sees its answers) until enough of its answers agree with the stable version's; its
    comparison is in status.shadow. Cannot be combined with spec.shadow."""
    steps: tuple[AnalysisStep, ...] = Field(
        min_length=1,
        max_length=20,
        json_schema_extra=k8s(list_type="atomic", rules=[
            Rule("self.map(s, s.weight).isSorted() && "
                 "self.all(s, size(self.filter(t, t.weight == s.weight)) == 1)",
                 "canary.analysis.steps weights must be strictly increasing, e.g. 5, 25, 50")]),
    )  # fmt: skip
    """Weight steps, in order, with strictly increasing weights (e.g. 5, 25, 50)."""
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    """Allowed canary error rate above the stable one over the step (absolute: 0.01 is one
    percentage point); a larger difference fails the step once Fisher's exact test finds
    it significant (p below alpha)."""
    max_p99_ratio: float | None = Field(default=1.5, gt=0)
    """Allowed canary p99 latency over the stable p99; null: latency is not judged."""
    p99_tolerance_ms: float = Field(default=5, ge=0, le=3_600_000, alias="p99ToleranceMs")
    """A canary p99 at most this many milliseconds above the stable p99 never fails a
    step, whatever maxP99Ratio says: the runtimes' p99 covers their last minute (for
    the canary, the shadow stage's low-priority mirrors too), and a model answering in
    a few milliseconds varies by that much on a busy node."""
    alpha: float = Field(default=0.01, gt=0, le=0.5)
    """Significance an error-rate regression must reach to fail a step."""


class Canary(_Spec):
    """A second version receiving a share of the traffic."""

    version: VersionLabel
    """The canary's version label (must differ from version)."""
    source: Source
    """Where the model file comes from and how to load it."""
    weight: int = Field(default=0, ge=0, le=100)
    """Percent (0-100) of the model's traffic sent to the canary."""
    replicas: int = Field(default=1, ge=1, le=1000)
    """Copies of the canary, each on a distinct pool pod."""
    analysis: Analysis | None = None
    """Automated canary analysis. With it the canary's share is the current step's weight
    (0 during a shadow stage; weight is ignored while it runs; editing weight stops the
    automation), the operator
    promotes the canary after the last step (as a user would: version and source become
    the canary's, canary is removed) and routes it no traffic at the first failed check
    (status.analysis.phase RolledBack, until the canary's version or source changes).
    Without it the canary keeps weight, as set by hand."""


class Shadow(_Spec):
    """A version that gets a copy of a share of the requests, after the primary answered:
    its answers are compared with the primary's and never returned to a client."""

    version: VersionLabel
    """The shadow's version label (must differ from version and canary.version)."""
    source: Source
    """Where the model file comes from and how to load it."""
    percent: float = Field(default=10, gt=0, le=100)
    """Percent of the model's answered requests mirrored to the shadow."""
    replicas: int = Field(default=1, ge=1, le=1000)
    """Copies of the shadow, each on a distinct pool pod."""


class Autoscaling(_Spec):
    """The built-in autoscaler: the stable version's copies follow its load between
    minReplicas and maxReplicas, and spec.replicas is then ignored. Without it the
    operator runs spec.replicas copies, which kubectl scale, an HPA or KEDA may set
    through the scale subresource (see docs/reference.md, "Scaling")."""

    model_config = ConfigDict(json_schema_extra=k8s(rules=[
        Rule("self.minReplicas <= self.maxReplicas",
             "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
             field_path=".minReplicas"),
        Rule("has(self.targetQueueMs) != has(self.targetInFlight)",
             "give exactly one of autoscaling.targetQueueMs or autoscaling.targetInFlight",
             reason="FieldValueRequired"),
    ]))  # fmt: skip

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest copies of the stable version. 0 scales the model to zero: after
    scaleDownDelaySeconds without traffic its copy is unloaded (Ready=False, reason
    ScaledToZero; its Service stays), and the gateways hold its next requests, each
    until its deadline, while the operator places and warms a copy."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most copies of the stable version; copies beyond the pool's pods or memory are not
    placed (a ScaleBlocked event says why)."""
    target_queue_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    """Target queue time per request, in milliseconds (the wait the runtimes expect for a
    request arriving now, the highest of the copies): copies are added when it is above
    the target, in proportion, and removed when it stays below 70% of it."""
    target_in_flight: float | None = Field(default=None, gt=0, le=1_000_000)
    """Target requests in flight (queued or running) per copy, averaged over the last
    10 s: copies are added when above it, in proportion, and removed when the load
    stays below 70% of it."""
    scale_down_delay_seconds: int = Field(default=60, ge=0, le=86_400)
    """How long the load must stay low before copies are removed (the stabilisation window)."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version a model asks for, with its role (``draining`` versions are not in
    the spec: the operator keeps them while their successor gets ready)."""

    version: str
    role: Role
    source: Source
    replicas: int
    weight: int


class ModelSpec(_Spec):
    """The model, its versions and how it is served."""

    model_config = ConfigDict(json_schema_extra=k8s(rules=[
        Rule("!has(self.canary) || self.canary.version != self.version",
             "canary.version must differ from version",
             field_path=".canary.version", reason="FieldValueInvalid"),
        Rule("!has(self.shadow) || (self.shadow.version != self.version && "
             "(!has(self.canary) || self.shadow.version != self.canary.version))",
             "shadow.version must differ from version and canary.version",
             field_path=".shadow.version", reason="FieldValueInvalid"),
        Rule("!has(self.batching) || !has(self.batching.pad) || self.batching.pad.inputs.all(n, "
             "self.inputs.exists(t, t.name == n && t.datatype != 'BYTES' && "
             "size(t.shape) > self.batching.pad.axis && t.shape[self.batching.pad.axis] == -1))",
             "batching.pad.inputs must name declared inputs, not BYTES ones, whose dimension "
             "batching.pad.axis is variable (-1)",
             field_path=".batching.pad.inputs", reason="FieldValueInvalid"),
        Rule("!has(self.batching) || !has(self.batching.pad) || !has(self.batching.pad.outputs) || "
             "self.batching.pad.outputs.all(n, self.outputs.exists(t, t.name == n && "
             "size(t.shape) > self.batching.pad.axis && t.shape[self.batching.pad.axis] == -1))",
             "batching.pad.outputs must name declared outputs whose dimension batching.pad.axis "
             "is variable (-1)",
             field_path=".batching.pad.outputs", reason="FieldValueInvalid"),
        Rule("!has(self.shadow) || !has(self.canary) || !has(self.canary.analysis) || "
             "!has(self.canary.analysis.shadow)",
             "canary.analysis.shadow must not be combined with spec.shadow (the canary is "
             "the shadow during that stage)",
             field_path=".canary.analysis.shadow", reason="FieldValueForbidden"),
    ]))  # fmt: skip

    pool: str = Field(min_length=1, max_length=63)
    """The InferencePool, in the same namespace, whose pods host this model."""
    priority: int = Field(default=0, ge=-2_147_483_648, le=1_000_000_000)
    """Higher is more important, as Kubernetes PriorityClass values. Placement serves
    higher priorities first and evicts lower ones to make room; negative values mark
    sheddable traffic, refused first under overload."""
    version: VersionLabel
    """The stable version's label (served at /v2/models/<name>/versions/<version>)."""
    source: Source
    """Where the model file comes from and how to load it."""
    inputs: Tensors
    """Declared tensors (name, OIP datatype, shape with -1 for variable dimensions)."""
    outputs: Tensors
    """Declared tensors (name, OIP datatype, shape with -1 for variable dimensions)."""
    latency_objective_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    """Latency the model's requests should be answered within, in milliseconds.
    Among models of one priority class, the runtime runs the batch whose answer
    is due first (earliest deadline first); its metric
    modelfleet_objective_total counts how many met it."""
    memory_mb: float | None = Field(default=None, gt=0, alias="memoryMB")
    """Device memory one copy needs, in MB. When absent the runtime measures it after
    loading (placement assumes 1000 MB until then)."""
    replicas: int = Field(default=1, ge=1, le=1000)
    """Copies of the stable version, each on a distinct pool pod (at most the pool's pods).
    The scale subresource sets it (kubectl scale im NAME --replicas=N, or an HPA or KEDA);
    ignored while autoscaling is set."""
    autoscaling: Autoscaling | None = None
    """The built-in autoscaler: the stable version's copies follow its load between
    minReplicas and maxReplicas, and spec.replicas is then ignored. Leave it out to fix
    the copies with spec.replicas, or to let an HPA or KEDA drive the scale subresource
    (scaleTargetRef kind InferenceModel, apiVersion modelfleet.io/v1alpha1). A canary
    scales on its own share: the same rule on its own load, from canary.replicas, between
    one copy (while it exists) and maxReplicas."""
    batching: Batching = Batching()
    """Dynamic batching of requests into one forward pass."""
    queue: Queue = Queue()
    """Admission of requests waiting for this model."""
    rate_limit: RateLimit | None = None
    """Token bucket per runtime pod; requests over it get 429 with Retry-After."""
    cache: Cache = Cache()
    """Result cache for repeated identical inputs."""
    warmup: Warmup = Warmup()
    """Warm-up before a version reports ready; no version receives a request before it is warm."""
    optimize: Literal["none", "trace", "inference"] = "none"
    """After loading: none; trace (TorchScript trace and freeze: one C++ call a forward pass);
    inference (trace and torch.jit.optimize_for_inference: oneDNN kernels on CPU). Only for
    models without data-dependent control flow; the runtime checks the optimized module
    answers like the eager one and fails the load otherwise."""
    canary: Canary | None = None
    """A second version receiving a share of the traffic. Promote by making it the
    version; roll back by removing it."""

    shadow: Shadow | None = None
    """A version that gets a copy of percent of the answered requests (mirrored by the
    gateway after the primary answered, compared, never returned to a client); the
    comparison is summarised in status.shadow. Remove it to unload the shadow."""

    def versions(self) -> list[ModelVersion]:
        """Stable first, then the canary, then the shadow (weight 0: it is only mirrored
        to); weights are percentages summing to 100."""
        canary_weight = self.canary.weight if self.canary else 0
        out = [
            ModelVersion(self.version, "stable", self.source, self.replicas, 100 - canary_weight)
        ]
        if self.canary:
            c = self.canary
            out.append(ModelVersion(c.version, "canary", c.source, c.replicas, c.weight))
        if self.shadow:
            s = self.shadow
            out.append(ModelVersion(s.version, "shadow", s.source, s.replicas, 0))
        return out


class Replicas(_Spec):
    """How many runtime pods the pool runs."""

    model_config = ConfigDict(json_schema_extra=k8s(rules=[
        Rule("self.min <= self.max", "replicas.min must not exceed replicas.max", field_path=".min")
    ]))  # fmt: skip

    min: int = Field(default=1, ge=1, le=1000)
    """Runtime pods always running (the StatefulSet's replicas)."""
    max: int = Field(default=1, ge=1, le=1000)
    """Upper bound on runtime pods; at least min. Above min, the operator adds pods
    (up to max) when the models' copies no longer fit on the pods there are, and
    removes them again, drained first, once the copies have fit on fewer pods for
    scaleDownDelaySeconds."""
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    """How long the models' copies must fit on fewer pods before the pool shrinks."""


class Resources(_Spec):
    """Resources of each runtime pod."""

    gpu: int = Field(default=1, ge=0, le=16)
    """nvidia.com/gpu requested by each pod (0 for a CPU pool)."""
    cpu: str = Field(default="2", pattern=r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
    """CPU request and limit of each runtime container (a Kubernetes quantity, e.g. 2 or 500m)."""
    memory: str = Field(default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    """Memory request and limit of each runtime container (a Kubernetes quantity, e.g. 8Gi)."""


class ModelStore(_Spec):
    """Where model files come from, mounted read-only at /models in every runtime pod."""

    claim_name: str | None = Field(default=None, max_length=253)
    """A PersistentVolumeClaim (same namespace) holding the model files."""


class GatewaySpec(_Spec):
    """The pool's gateway Deployment, which every model's Service reaches."""

    replicas: int = Field(default=1, ge=1, le=100)
    """Gateway pods."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests in flight per model at each gateway pod; beyond it, low priority is shed first
    (a request of priority 1-4 may go up to twice it)."""


class RuntimeSettings(_Spec):
    """How each runtime pod runs its forward passes."""

    executor: Literal["thread", "process"] = "thread"
    """thread: forward passes on a thread of the serving process (the default; right
    for GPU pools). process: in a child process with its own GIL, so that HTTP work
    never delays a forward pass (CPU pools; see docs/benchmarks.md)."""
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    """torch intra-op threads in each pod; torch's own default when absent."""
    forward_nice: int | None = Field(default=None, ge=0, le=19)
    """How much lower the forward pass's CPU priority is than the event loop's in each
    pod (Linux nice; 0, the runtime's default, when absent; 10 suits a CPU-bound pool). The loop then admits,
    refuses and answers requests first where both share a CPU; 0 makes them equal."""
    yield_batch_ms: float | None = Field(default=None, gt=0, le=10000)
    """Bounds a higher-priority model's wait for a lower one's batch in progress:
    while a model of higher priority on the pod has requests arriving or queued, a
    lower model's batch is cut to the rows its measured time per row fits in this
    many milliseconds (whole requests, at least one). Off when absent."""
    express_lane: bool | None = None
    """On CPU pools: a higher-priority batch runs on a second thread (with the process
    executor, of the forward process) beside a lower one in progress instead of
    waiting for it to end (the runtime's default: on). false serializes every batch.
    No effect on GPU pods."""


Toleration = Annotated[
    dict[str, object],
    Field(
        description="A Kubernetes Toleration (key, operator, value, effect, tolerationSeconds).",
        json_schema_extra=k8s(preserve_unknown=True),
    ),
]


class PoolSpec(_Spec):
    """The pool's pods, their resources and the gateway."""

    replicas: Replicas = Field(
        default=Replicas(), json_schema_extra=k8s(default={"min": 1, "max": 1})
    )
    """How many runtime pods the pool runs."""
    resources: Resources = Resources()
    """Resources of each runtime pod."""
    memory_budget_mb: float = Field(default=16000, ge=1, alias="memoryBudgetMB")
    """Device memory each pod may give to models, in MB. Placement never exceeds it and
    the runtime refuses loads past it."""
    image: str | None = Field(default=None, min_length=1)
    """The runtime image; it also runs the gateway. When absent, the operator's
    default (its MODELFLEET_RUNTIME_IMAGE, set by the Helm chart's
    runtime.image; otherwise modelfleet/runtime:0.1.0)."""
    model_store: ModelStore = ModelStore()
    """Where model files come from, mounted read-only at /models in every runtime pod."""
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """PriorityClass of the runtime pods, so the scheduler preempts lower-priority pools first."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the runtime pods require."""
    tolerations: tuple[Toleration, ...] = Field(default=(), json_schema_extra=k8s(default=None))
    """Tolerations of the runtime pods (Kubernetes Toleration objects)."""
    gateway: GatewaySpec = GatewaySpec()
    """The pool's gateway Deployment, which every model's Service reaches."""
    runtime: RuntimeSettings = RuntimeSettings()
    """How each runtime pod runs its forward passes."""


def given(**fields: object) -> dict[str, Any]:
    """The keyword arguments whose value is not None: a document's optional fields are
    only set (and so only written, ``exclude_unset``) when the spec sets them, so that
    a runtime that predates one (``batching.pad``) still takes a document without it."""
    return {name: value for name, value in fields.items() if value is not None}


def runtime_model(name: str, spec: ModelSpec, version: ModelVersion) -> rd.ModelConfig:
    """One entry of a runtime pod's desired-state document (docs/contracts.md),
    in the runtime's own models (``modelfleet.api.runtime_document``): a spec the
    runtime would refuse raises ``pydantic.ValidationError`` here."""
    source = version.source
    return rd.ModelConfig(
        name=name,
        version=version.version,
        source=source.location,
        format=source.format,
        trusted=source.trusted,
        priority=spec.priority,
        inputs=tuple(_tensor(t) for t in spec.inputs),
        outputs=tuple(_tensor(t) for t in spec.outputs),
        batching=_batching(spec.batching),
        queue=rd.Queue(max_size=spec.queue.max_size, timeout_ms=spec.queue.timeout_ms),
        cache=rd.Cache(enabled=spec.cache.enabled, max_bytes=spec.cache.max_bytes),
        warmup=rd.Warmup(enabled=spec.warmup.enabled, data=spec.warmup.data),
        optimize=spec.optimize,
        **given(
            architecture=source.architecture,
            sha256=source.sha256,
            rate_limit=_rate_limit(spec.rate_limit),
            memory_mb=spec.memory_mb,
            latency_objective_ms=spec.latency_objective_ms,
        ),
    )


def _tensor(t: Tensor) -> rd.TensorSpec:
    return rd.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape)


def _batching(b: Batching) -> rd.Batching:
    pad = None
    if b.pad is not None:
        p = b.pad
        pad = rd.Padding(inputs=dict(p.inputs), axis=p.axis, buckets=p.buckets, outputs=p.outputs)
    return rd.Batching(
        max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms, **given(pad=pad)
    )


def _rate_limit(r: RateLimit | None) -> rd.RateLimit | None:
    if r is None:
        return None
    return rd.RateLimit(requests_per_second=r.requests_per_second, burst=r.burst)
