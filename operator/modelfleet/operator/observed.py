"""What the operator sees of a runtime pod: its ``GET /admin/state`` answer,
parsed at the edge, or (while the pod does not answer) the last document the
operator gave it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

Key = tuple[str, str]
"""(model, version)."""
LIVE = ("loading", "warming", "ready")


def _key(entry: dict[str, Any]) -> Key:
    return (str(entry.get("name")), str(entry.get("version", "1")))


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ObservedVersion(_Lenient):
    name: str
    version: str
    state: str = "loading"
    """``loading``, ``warming``, ``ready``, ``failed`` or ``draining``."""
    reason: str = ""
    """Why the version failed (the runtime's message)."""
    memory_mb: float = 0.0
    """Device memory measured after loading."""
    queue_depth: int = 0
    served: int = 0
    errors: int = 0
    shed: int = 0
    """Of the errors, requests the runtime's admission refused or dropped (overload)."""
    objective_met: int = 0
    objective_missed: int = 0
    """Answered requests within / past the model's latency objective (when it has one)."""
    p99_ms: float | None = None
    """p99 latency of the pod's last 60 s of successful requests (None when idle)."""
    loaded_at: float = 0.0
    """When this copy became ready (epoch seconds): a reload changes it."""

    @property
    def key(self) -> Key:
        return (self.name, self.version)


class DesiredModels(_Lenient):
    models: tuple[dict[str, Any], ...] = ()
    """The runtime's desired models, every default filled in (compared, not interpreted)."""

    def keys(self) -> set[Key]:
        return {_key(m) for m in self.models}


class ActualState(_Lenient):
    ready: bool = False
    draining: bool = False
    memory_in_use_mb: float = 0.0
    models: tuple[ObservedVersion, ...] = ()


class RuntimeState(_Lenient):
    """The runtime's ``GET /admin/state`` answer."""

    desired: DesiredModels = DesiredModels()
    actual: ActualState = ActualState()


@dataclass
class PodView:
    """One runtime pod of a pool, as seen during one pass."""

    name: str
    ip: str
    state: RuntimeState | None = None
    """The admin API's answer; None when the pod did not answer."""
    remembered: tuple[dict[str, Any], ...] = ()
    """Model entries of the pod's durable document (its ConfigMap entry): what it
    was last told to host, used as its placement while it does not answer."""

    @property
    def reachable(self) -> bool:
        return self.state is not None

    def observed(self) -> dict[Key, ObservedVersion]:
        if self.state is None:
            return {}
        return {m.key: m for m in self.state.actual.models}

    def hosting(self) -> set[Key]:
        """Versions this pod currently holds a place for: what it was told to host
        plus what it still reports loaded (a restarted operator reads placements here)."""
        if self.state is None:
            return {_key(m) for m in self.remembered}
        held = self.state.desired.keys()
        held |= {k for k, m in self.observed().items() if m.state in LIVE}
        return held

    def entry(self, key: Key) -> dict[str, Any] | None:
        """The model entry this pod was told to host for ``key`` (as it has it)."""
        told = self.state.desired.models if self.state is not None else self.remembered
        return next((dict(m) for m in told if _key(m) == key), None)

    def ready_for(self, key: Key) -> bool:
        if self.state is None or self.state.actual.draining:
            return False
        seen = self.observed().get(key)
        return seen is not None and seen.state == "ready"
