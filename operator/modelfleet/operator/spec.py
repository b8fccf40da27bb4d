"""Typed views of the resources' specs, parsed at the edge.

The CRD schema has already validated and defaulted what the API server stores;
these models mirror it field for field (camelCase aliases) so that nothing
downstream handles raw dicts, and so that a spec written before a default
existed still parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP, VERSION = "modelfleet.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_MEMORY_MB = 1000.0
"""Memory assumed for a version that declares none and has not been measured yet."""

Role = Literal["stable", "canary", "draining"]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
    "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
"""The OIP datatypes the CRD's enum allows (the runtime's ``TensorSpec.datatype``)."""


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, alias_generator=to_camel
    )


class Tensor(_Spec):
    name: str
    """Tensor name as clients send it."""
    datatype: Datatype
    """OIP datatype (FP32, INT64, ..., BYTES for strings)."""
    shape: tuple[int, ...]
    """Shape including the batch dimension; -1 marks a variable dimension."""


class Source(_Spec):
    path: str | None = None
    """A file in the pool's model store."""
    url: str | None = None
    """An http(s) URL of the model file."""
    sha256: str | None = None
    """Digest checked by the runtime before anything is loaded."""
    format: Literal["auto", "safetensors", "state_dict", "export", "torchscript"] = "auto"
    """File format; auto decides by extension."""
    architecture: str | None = None
    """``package.module:factory`` for safetensors and state dicts."""
    trusted: bool = False
    """TorchScript runs code: the runtime only loads it when true."""

    @property
    def location(self) -> str:
        return self.path or self.url or ""


class Padding(_Spec):
    inputs: dict[str, float]
    """Input name -> the value its padding holds."""
    axis: int = 1
    """The padded dimension (1: the sequence dimension of ``[batch, seq, ...]``)."""
    buckets: tuple[int, ...]
    """Strictly increasing lengths to pad to; longer requests are refused with 400."""
    outputs: tuple[str, ...] = ()
    """Outputs sliced back to each request's own length along ``axis``."""


class Batching(_Spec):
    max_batch_size: int = 16
    """Largest batch sent to one forward pass."""
    max_queue_delay_ms: float = 2.0
    """Longest wait for a batch to fill."""
    pad: Padding | None = None
    """Variable-length inputs padded to buckets so that requests of different
    lengths share a batch; without it only requests of one shape do."""


class Queue(_Spec):
    max_size: int = 256
    """Queued requests beyond this are refused with 503."""
    timeout_ms: float = 30_000
    """Default request deadline (also the gateway's)."""


class RateLimit(_Spec):
    requests_per_second: float
    """Sustained rate per runtime pod."""
    burst: int = 0
    """Bucket size; 0 means one second's worth."""


class Cache(_Spec):
    enabled: bool = False
    """Serve repeated identical inputs from the result cache."""
    max_bytes: int = 64 * 1024 * 1024
    """Bound on cached bytes per pod."""


class Warmup(_Spec):
    enabled: bool = True
    """Warm-up batches before the version reports ready (and takes traffic)."""
    data: Literal["zero", "random"] = "zero"
    """Input data of the warm-up batches."""


class Canary(_Spec):
    version: str
    """The canary's version label (differs from the stable one)."""
    source: Source
    """Where the canary's file comes from."""
    weight: int = 0
    """Percent of the model's traffic sent to the canary."""
    replicas: int = 1
    """Copies of the canary, each on a distinct pod."""


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
    pool: str
    """The InferencePool (same namespace) hosting the model."""
    priority: int = 0
    """Higher is more important; negative means sheddable."""
    version: str
    """The stable version's label."""
    source: Source
    """Where the stable version's file comes from."""
    inputs: tuple[Tensor, ...]
    """Declared input tensors."""
    outputs: tuple[Tensor, ...]
    """Declared output tensors."""
    latency_objective_ms: float | None = None
    """Answer within this many ms: earliest deadline first within a priority class."""
    memory_mb: float | None = Field(default=None, alias="memoryMB")
    """Device memory one copy needs; measured by the runtime when absent."""
    replicas: int = 1
    """Copies of the stable version, each on a distinct pod."""
    batching: Batching = Batching()
    queue: Queue = Queue()
    rate_limit: RateLimit | None = None
    cache: Cache = Cache()
    warmup: Warmup = Warmup()
    optimize: Literal["none", "trace", "inference"] = "none"
    """The runtime's ``optimize`` for every version of the model."""
    canary: Canary | None = None

    def versions(self) -> list[ModelVersion]:
        """Stable first, then the canary; weights are percentages summing to 100."""
        canary_weight = self.canary.weight if self.canary else 0
        out = [
            ModelVersion(self.version, "stable", self.source, self.replicas, 100 - canary_weight)
        ]
        if self.canary:
            c = self.canary
            out.append(ModelVersion(c.version, "canary", c.source, c.replicas, c.weight))
        return out


class Replicas(_Spec):
    min: int = 1
    """Runtime pods always running."""
    max: int = 1
    """Upper bound on runtime pods."""


class Resources(_Spec):
    gpu: int = 1
    """nvidia.com/gpu per runtime pod."""
    cpu: str = "2"
    """CPU request and limit of the runtime container."""
    memory: str = "8Gi"
    """Memory request and limit of the runtime container."""


class ModelStore(_Spec):
    claim_name: str | None = None
    """PersistentVolumeClaim mounted read-only at /models."""


class GatewaySpec(_Spec):
    replicas: int = 1
    """Gateway pods."""
    max_concurrency: int = 64
    """Requests in flight per model at each gateway pod."""


class RuntimeSettings(_Spec):
    executor: Literal["thread", "process"] = "thread"
    """Where each pod runs forward passes: a thread of the serving process, or a
    child process with its own GIL (the runtime's ``server.executor``)."""
    torch_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads in each pod; torch's own default when absent."""


class PoolSpec(_Spec):
    replicas: Replicas = Replicas()
    resources: Resources = Resources()
    memory_budget_mb: float = Field(default=16000, alias="memoryBudgetMB")
    """Device memory each pod gives to models; placement never exceeds it."""
    image: str | None = None
    """Runtime image (also runs the gateway); the operator's default when empty."""
    model_store: ModelStore = ModelStore()
    priority_class_name: str | None = None
    """PriorityClass of the runtime pods."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, object], ...] = ()
    """Kubernetes Toleration objects, passed through unchanged."""
    gateway: GatewaySpec = GatewaySpec()
    runtime: RuntimeSettings = RuntimeSettings()


OMITTED_WHEN_UNSET: tuple[tuple[str, ...], ...] = (
    ("architecture",), ("sha256",), ("rate_limit",), ("memory_mb",), ("batching", "pad"),
    ("latency_objective_ms",),
)  # fmt: skip
"""Paths of the entry fields ``runtime_model`` leaves out when the spec does not set
them (a runtime that predates ``batching.pad`` still takes a document without it); a
pod whose desired state still sets one must be told again (``podapi.same_models``)."""


def runtime_model(name: str, spec: ModelSpec, version: ModelVersion) -> dict[str, object]:
    """One entry of a runtime pod's desired-state document (docs/contracts.md)."""
    source = version.source
    entry: dict[str, object] = {
        "name": name,
        "version": version.version,
        "source": source.location,
        "format": source.format,
        "trusted": source.trusted,
        "priority": spec.priority,
        "inputs": [t.model_dump(mode="json") for t in spec.inputs],
        "outputs": [t.model_dump(mode="json") for t in spec.outputs],
        "batching": spec.batching.model_dump(mode="json", exclude_none=True),
        "queue": spec.queue.model_dump(mode="json"),
        "cache": spec.cache.model_dump(mode="json"),
        "warmup": spec.warmup.model_dump(mode="json"),
        "optimize": spec.optimize,
    }
    if source.architecture:
        entry["architecture"] = source.architecture
    if source.sha256:
        entry["sha256"] = source.sha256
    if spec.rate_limit:
        entry["rate_limit"] = spec.rate_limit.model_dump(mode="json")
    if spec.memory_mb:
        entry["memory_mb"] = spec.memory_mb
    if spec.latency_objective_ms:
        entry["latency_objective_ms"] = spec.latency_objective_ms
    return entry
