"""What the operator sees of a runtime pod: its ``GET /admin/state`` answer,
parsed at the edge, or (while the pod does not answer) the last document the
operator gave it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.api.admin import ActualState, AdminState, DesiredModels, Key, VersionState

__all__ = ["LIVE", "ActualState", "DesiredModels", "Key", "ObservedVersion", "PodView",
           "RuntimeState"]  # fmt: skip
LIVE = ("loading", "warming", "ready")


def _key(entry: dict[str, Any]) -> Key:
    return (str(entry.get("name")), str(entry.get("version", "1")))


ObservedVersion = VersionState
"""One model version as a runtime pod reports it (``modelfleet.api.admin``)."""
RuntimeState = AdminState
"""The runtime's ``GET /admin/state`` answer (``modelfleet.api.admin``)."""


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
