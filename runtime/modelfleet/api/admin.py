"""A runtime's ``GET /admin/state`` answer: built by the runtime, read by the operator.

The models ignore fields they do not know and default the ones they miss, so a
runtime and an operator of neighbouring versions still understand each other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Key = tuple[str, str]
"""(model, version)."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class VersionState(_Lenient):
    """One model version as a runtime holds it."""

    name: str
    version: str
    state: str = "loading"
    """``loading``, ``warming``, ``ready``, ``failed`` or ``draining``."""
    reason: str = ""
    """Why the version failed (the runtime's message)."""
    memory_mb: float = 0.0
    """Device memory measured after loading."""
    queue_depth: int = 0
    inflight: int = 0
    """Requests admitted and not yet answered (queued or running)."""
    queue_wait_ms: float = 0.0
    """The queue wait a default-priority request arriving now can expect (ms): the
    measured forward time of the work ahead of it (the autoscaler's queue time)."""
    served: int = 0
    errors: int = 0
    shed: int = 0
    """Of the errors, requests the runtime's admission refused or dropped (overload)."""
    objective_met: int = 0
    objective_missed: int = 0
    """Answered requests within / past the model's latency objective (when it has one)."""
    p99_ms: float | None = None
    """p99 latency of the last 60 s of successful requests (None when idle)."""
    loaded_at: float = 0.0
    """When this copy became ready (epoch seconds): a reload changes it."""
    weights_mb: float | None = None
    """Device memory of the weights, measured at load (None: not measured, e.g. on CPU)."""
    peak_working_mb: float | None = None
    """Peak device memory of a forward pass beyond the weights, the largest over the
    warm-up batch sizes (None: not measured: CPU, or no warm-up)."""
    peak_working_mb_by_batch: dict[int, float] | None = None
    """Warm-up batch size (rows) -> its peak working memory (MiB), as measured."""
    device: str | None = None
    """The device that holds this copy (``cuda:1`` in a pod with several GPUs; None
    where the runtime does not say)."""

    @property
    def key(self) -> Key:
        return (self.name, self.version)


class LeakedVersion(_Lenient):
    """A model version whose device memory did not come back when it was unloaded."""

    name: str
    version: str
    leaked_mb: float
    """Of its weights, what was still allocated after the unload (and ``empty_cache``)."""
    at: float = 0.0
    """When it was unloaded (epoch seconds)."""


class DeviceUsage(_Lenient):
    """One device of the runtime (each GPU of a pod with several)."""

    device: str
    memory_in_use_mb: float = 0.0
    """Device memory of the versions held there, as the runtime accounts it."""
    allocated_mb: float | None = None
    """The allocator's allocated memory now (None: not measured, e.g. on CPU)."""
    reserved_mb: float | None = None
    models: tuple[str, ...] = ()
    """The versions held there, as ``name:version``."""


class ActualState(_Lenient):
    """What the runtime holds now."""

    ready: bool = False
    draining: bool = False
    device: str = ""
    memory_budget_mb: float | None = None
    memory_in_use_mb: float = 0.0
    models: tuple[VersionState, ...] = ()
    device_allocated_mb: float | None = None
    """The device allocator's allocated memory now (None: not measured, e.g. on CPU)."""
    device_reserved_mb: float | None = None
    """The device allocator's reserved memory now (cached blocks included)."""
    reserved_after_unload_mb: float | None = None
    """Reserved memory right after the last unload and ``empty_cache`` (None: none yet)."""
    leaked: tuple[LeakedVersion, ...] = ()
    """Recently unloaded versions whose memory did not come back."""
    devices: tuple[DeviceUsage, ...] = ()
    """Each device and what it holds (executor ``thread``; one per GPU of the pod)."""


class DesiredModels(_Lenient):
    models: tuple[dict[str, Any], ...] = ()
    """The runtime's desired models, every default filled in (compared, not interpreted)."""

    def keys(self) -> set[Key]:
        return {(str(m.get("name")), str(m.get("version", "1"))) for m in self.models}


class AdminState(_Lenient):
    """The whole answer: what the runtime was told to hold, and what it holds."""

    desired: DesiredModels = DesiredModels()
    actual: ActualState = ActualState()
