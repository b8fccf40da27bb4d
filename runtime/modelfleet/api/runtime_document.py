"""The runtime's desired-state document: the server settings and the models it hosts.

The same document is read from a YAML file at start (``modelfleet serve
--config``), mounted from a ConfigMap by the operator, and replaced at run time
through the admin API (``PUT /admin/state``). The runtime parses it once at the
edge into these typed models; the operator builds it from them (one document per
runtime pod) and serialises it only where it writes the ConfigMap or the PUT body.
Nothing downstream sees raw dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
    model_validator,
)

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
    "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    """Tensor name as clients send it in ``inputs[].name``."""
    datatype: Literal[
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
        "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    """OIP datatype. ``BYTES`` tensors (strings) reach the module as a numpy array of
    ``bytes`` objects (dtype ``object``) of the shape sent; a BYTES output may be
    returned as such an array or as a (nested) list of ``bytes``/``str``."""
    shape: tuple[int, ...]
    """Shape including the batch dimension; -1 marks a variable dimension."""

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            raise ValueError("shape needs at least the batch dimension")
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"dimensions must be positive or -1, got {list(shape)}")
        return shape


class Padding(_Strict):
    """Pad variable-length inputs to a bucket so that requests of different
    lengths share a batch (sequence models: token ids and their attention mask)."""

    inputs: dict[str, float] = Field(min_length=1)
    """Input name -> the value its padding holds (e.g. ``{ids: 0, mask: 0}``). Every
    input named here must have a variable dimension at ``axis``, and a request's
    inputs named here must agree on their length along it."""
    axis: int = Field(default=1, ge=1)
    """The padded dimension (1: the sequence dimension of ``[batch, seq, ...]``)."""
    buckets: tuple[int, ...] = Field(min_length=1)
    """Increasing lengths to pad to: a request goes to the smallest bucket that holds
    it and shares a batch only with requests of the same bucket. A request longer
    than the largest bucket is refused with 400."""
    outputs: tuple[str, ...] = ()
    """Outputs with a sequence dimension at ``axis`` (e.g. per-token states): each
    request gets them sliced back to its own length."""

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[int, ...]) -> tuple[int, ...]:
        if any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must be positive and increasing, got {list(buckets)}")
        return buckets

    def bucket(self, length: int) -> int | None:
        """The smallest bucket holding ``length``; None when none does."""
        return next((b for b in self.buckets if b >= length), None)


class Batching(_Strict):
    max_batch_size: int = Field(default=16, ge=1, le=4096)
    """Largest batch (sum of the requests' dim 0) sent to one forward pass."""
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    """How long the oldest queued request may wait for the batch to fill."""
    eager: bool = True
    """When the device is free and no further request for this model is being
    received, run what is queued at once instead of waiting out
    ``max_queue_delay_ms`` (requests still batch up while the device is busy).
    False waits like Triton's dynamic batcher."""
    pad: Padding | None = None
    """Without it (Triton's default), a batch only holds requests whose inputs agree
    in every dimension but the batch one: requests of another shape wait for a
    batch of their own. With it, the named inputs are padded to buckets."""


class Queue(_Strict):
    max_size: int = Field(default=256, ge=1)
    """Requests waiting for this model beyond this number are refused with 503."""
    timeout_ms: float = Field(default=30_000, gt=0)
    """Default deadline of a request; Triton's ``timeout`` parameter can only shorten it."""


class RateLimit(_Strict):
    requests_per_second: float = Field(gt=0)
    """Sustained rate admitted for this model (token bucket refill)."""
    burst: int = Field(default=0, ge=0)
    """Bucket size; 0 means one second's worth of requests."""


class Cache(_Strict):
    enabled: bool = False
    """Serve repeated identical inputs from an LRU cache, skipping the queue."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Upper bound on the bytes of cached outputs."""


class Warmup(_Strict):
    enabled: bool = True
    """Run warm-up batches before the model reports ready."""
    batch_sizes: tuple[int, ...] = ()
    """Batch sizes to run; empty means powers of two up to max_batch_size, and it."""
    data: Literal["zero", "random"] = "zero"
    """Input data of the warm-up batches."""
    iterations: int = Field(default=1, ge=1, le=100)
    """Passes per batch size."""


class ModelConfig(_Strict):
    """One model version hosted by the runtime."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", max_length=63)
    """Model name as it appears in ``/v2/models/{name}``."""
    version: str = Field(default="1", pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    """Version label; several versions of one model may be hosted at once."""
    source: str
    """Path of the model file (or directory of it) in the model store."""
    format: Literal["auto", "safetensors", "state_dict", "export", "torchscript"] = "auto"
    """File format; ``auto`` decides by extension."""
    architecture: str | None = None
    """``package.module:factory`` building the module for safetensors and state dicts."""
    architecture_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    """Keyword arguments passed to the architecture factory."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """When given, the file's digest must match before anything is loaded."""
    trusted: bool = False
    """TorchScript runs arbitrary code: it is only loaded when this is true."""
    priority: int = 0
    """Model priority (Kubernetes PriorityClass meaning: higher is more important)."""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    batching: Batching = Batching()
    queue: Queue = Queue()
    rate_limit: RateLimit | None = None
    cache: Cache = Cache()
    warmup: Warmup = Warmup()
    optimize: Literal["none", "trace", "inference"] = "none"
    """``trace``: trace and freeze the module with TorchScript after loading, so a
    forward pass runs as one C++ call (faster, and it barely needs the GIL).
    ``inference``: trace and ``torch.jit.optimize_for_inference`` (freezing,
    conv-batchnorm folding, oneDNN kernels on CPU: the example CNN ran 3.4x faster
    than traced at batch 16 on a CPU host). Only for models without data-dependent
    control flow; outputs are checked against the eager module before it is used."""
    memory_mb: float | None = Field(default=None, gt=0)
    """Device memory the model needs; measured after loading when not given."""
    latency_objective_ms: float | None = Field(default=None, gt=0)
    """Latency the model's requests should be answered within: among queues of one
    priority class, the batch whose answer is due first runs first (earliest
    deadline first), and ``modelfleet_objective_total`` counts its attainment."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @model_validator(mode="after")
    def _architecture_needed(self) -> ModelConfig:
        fmt = self.resolved_format
        if fmt in ("safetensors", "state_dict") and not self.architecture:
            raise ValueError(f"model {self.name!r}: format {fmt} needs 'architecture'")
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: input names must be unique")
        if self.optimize != "none" and any(t.datatype == "BYTES" for t in self.inputs):
            raise ValueError(
                f"model {self.name!r}: optimize: {self.optimize} cannot trace BYTES inputs"
            )
        pad = self.batching.pad
        if pad is not None:
            _check_padded(self.name, "input", self.inputs, tuple(pad.inputs), pad.axis)
            _check_padded(self.name, "output", self.outputs, pad.outputs, pad.axis)
        return self

    @property
    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        suffix = Path(self.source).suffix
        return {
            ".safetensors": "safetensors",
            ".pt2": "export",
            ".ts": "torchscript",
            ".pt": "state_dict",
            ".pth": "state_dict",
        }.get(suffix, "safetensors")


def _check_padded(
    model: str, kind: str, specs: tuple[TensorSpec, ...], names: tuple[str, ...], axis: int
) -> None:
    by_name = {t.name: t for t in specs}
    for name in names:
        spec = by_name.get(name)
        if spec is None:
            raise ValueError(
                f"model {model!r}: batching.pad names {kind} {name!r}, "
                f"the model's {kind}s are {', '.join(repr(n) for n in by_name)}"
            )
        if len(spec.shape) <= axis or spec.shape[axis] != -1:
            raise ValueError(
                f"model {model!r}: batching.pad {kind} {name!r} has shape {list(spec.shape)}: "
                f"dimension {axis} must be variable (-1) to be padded"
            )
        if kind == "input" and spec.datatype == "BYTES":
            raise ValueError(f"model {model!r}: BYTES input {name!r} cannot be padded")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    """Address the data and admin ports bind to."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Data port: the OIP API and /metrics."""
    admin_port: int = Field(default=8081, ge=0, le=65535)
    """Admin port (repository extension, desired state, drain)."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the OIP gRPC API (``inference.GRPCInferenceService``); off when unset.
    The operator sets it on every runtime pod."""
    admin_token_file: str | None = None
    """File holding the admin bearer token; the admin API is off without it."""
    device: str = "auto"
    """``auto`` picks CUDA when present, else CPU; or ``cpu``, ``cuda:0``..."""
    memory_budget_mb: float = Field(default=8192, gt=0)
    """Device memory all hosted models together may use; a load past it fails."""
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Request bodies larger than this are refused with 413."""
    drain_grace_s: float = Field(default=30, ge=0)
    """On SIGTERM, how long queued and in-flight requests get to finish."""
    default_priority_level: int = Field(default=5, ge=1)
    """Level of requests without a priority (Triton's ``priority: 0``); 1 is the highest."""
    aging_ms: float | None = Field(default=None, gt=0)
    """Scheduler aging, off by default: each this much a model's oldest request
    has waited raises its batch's rank by one priority level, so that no lower
    class starves. Under sustained overload it lets the backlog of a lower class
    overtake fresh higher-priority requests (a 100 ms aging once put the example
    MLP behind 1-2 s of CNN backlog); without it the order is strict and the
    lower class is refused at admission or expires at its deadline instead."""
    yield_batch_ms: float | None = Field(default=None, gt=0)
    """A higher-priority model's wait for a batch in progress, bounded: while a model
    of higher priority on the same device has requests arriving (or queued), a lower
    one's batch is cut to the rows its measured time per row fits in this many
    milliseconds (at least one request; requests are never split). Batches keep their
    size when no higher class is active. Off by default: smaller batches cost the
    lower class throughput where the forward pass is more efficient at size."""
    express_lane: bool = True
    """On a CPU device: a batch of a strictly higher class (request priority level,
    then model priority) runs on a second thread beside a lower one in progress,
    instead of waiting for it to end; the OS shares the CPU between the two (with
    ``forward_nice``, the device thread's lower batch goes behind). With ``executor:
    process`` the second thread is in the forward process, fed by a pipe of its own.
    On a GPU the setting changes nothing (batches run one at a time)."""
    torch_threads: int | None = Field(default=None, ge=1)
    """``torch.set_num_threads``; default leaves torch's choice."""
    gil_switch_interval_us: float = Field(default=100, gt=0)
    """``sys.setswitchinterval``: how soon the forward thread gets the GIL back
    from the event loop between operators. Python's 5 ms default makes a forward
    pass that shares the process with a busy event loop up to 5x slower."""
    model_store: str = "."
    """Relative model sources are resolved against this directory."""
    retain_freed_memory_mb: int = Field(default=1024, ge=0)
    """Freed memory (up to this many MiB) stays in the process that runs the
    forward passes instead of going back to the OS after each one (glibc
    malloc's trim threshold; blocks up to 32 MiB then come from its heap). Without
    it a forward pass with activations of a few MiB page-faults all of them in
    again each time: about 27% of the example CNN's time at batch 16 on CPU.
    0 leaves glibc's own thresholds: worth trying with ``optimize: inference``,
    whose oneDNN kernels took no faults either way and ran about 7% slower on
    heap memory in the one model measured (docs/benchmarks.md)."""
    forward_nice: int = Field(default=0, ge=0, le=19)
    """How much lower the forward pass's CPU priority is than the event loop's (Linux
    ``nice``, per thread; the forward process with ``executor: process``). Where the
    two share a CPU, the event loop, which admits, refuses and answers requests, then
    runs first and the forward pass takes the CPU time the loop leaves: a surge of
    low-priority connections is read and refused at once instead of waiting in the
    socket in front of everything, high-priority requests included. In a pod it
    arbitrates only between the runtime's own threads (its container's CPU share is
    the cgroup's); with CPU to spare it changes nothing. Off (0) by default: on a bare
    host a niced forward pass also yields to every other process, and the cluster tests
    (runtimes as bare processes beside kwok, etcd and the operator) turned flaky with
    10. 0 leaves both equal: with
    the example fleet on one CPU under a low-priority surge of 2x its capacity, the
    high-priority p99 was 0.35-0.5 s at 0 and 17-180 ms at 10-19
    (docs/benchmarks.md)."""
    executor: Literal["thread", "process"] = "thread"
    """Where forward passes run. ``thread``: a thread of this process, sharing its
    GIL with the event loop. ``process``: a child process that holds the modules
    and runs nothing else, so HTTP work never delays a forward pass; each batch
    then travels through a pipe (worth it when the forward pass is CPU-bound and
    requests are small, as on a CPU-only host)."""
    device_cpus: tuple[NonNegativeInt, ...] | None = Field(default=None, min_length=1)
    """CPUs (Linux numbering) that the device thread runs on alone; the event loop
    and every other thread of the process get the remaining CPUs. Off by default
    (the OS places every thread). On a CPU-only host with ``torch_threads: 1`` give
    the forward pass one CPU of its own, e.g. ``[0]``: it then neither migrates
    nor takes turns with the event loop. With ``executor: process`` they are the
    forward process's CPUs."""


class RuntimeDocument(_Strict):
    """The whole desired state of one runtime process."""

    server: ServerConfig = ServerConfig()
    models: tuple[ModelConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> RuntimeDocument:
        keys = [m.key for m in self.models]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"models listed twice: {', '.join(f'{n}:{v}' for n, v in dupes)}")
        return self


class ConfigError(Exception):
    """The document could not be read or does not validate; the message says where."""


def parse_document(data: object) -> RuntimeDocument:
    try:
        return RuntimeDocument.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc


def load_document(path: str | Path) -> RuntimeDocument:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_document(data or {})


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line per field: ``where: what``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
