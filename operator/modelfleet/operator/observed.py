"""What the operator sees of a runtime pod: its ``GET /admin/state`` answer,
parsed at the edge, or (while the pod does not answer) the last document the
operator gave it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from modelfleet.api.admin import ActualState, AdminState, DesiredModels, Key, VersionState
from modelfleet.api.runtime_document import ModelConfig
from modelfleet.operator.restarts import Restarts

__all__ = ["LIVE", "ActualState", "DesiredModels", "Key", "ObservedVersion", "PodView",
           "RuntimeState", "known", "model_entry"]  # fmt: skip
LIVE = ("loading", "warming", "ready")
M = TypeVar("M", bound=BaseModel)


def _key(entry: Mapping[str, Any]) -> Key:
    return (str(entry.get("name")), str(entry.get("version", "1")))


def known(model: type[M], data: object) -> M | None:
    """``data`` (what a pod reports, or a ConfigMap holds) as ``model``; None when it
    does not validate. Fields this operator does not know (a newer runtime's or
    gateway's) are left out rather than refused: the operator never sets them, so
    they hold their defaults."""
    data = copy.deepcopy(data)
    for _ in range(2):  # one validation reports every unknown field
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            if any(e["type"] != "extra_forbidden" for e in errors):
                return None
            for e in errors:
                parent: Any = data
                for step in e["loc"][:-1]:
                    parent = parent[step]
                parent.pop(e["loc"][-1], None)
    return None


def model_entry(entry: Mapping[str, Any]) -> ModelConfig | None:
    """A model entry as a runtime reports it (or the state ConfigMap holds it), typed."""
    return known(ModelConfig, entry)


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
    remembered: tuple[ModelConfig, ...] = ()
    """Model entries of the pod's durable document (its ConfigMap entry): what it
    was last told to host, used as its placement while it does not answer."""
    restarts: Restarts = field(default_factory=Restarts)
    """What the kubelet reports of its runtime container's restarts."""

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
            return {m.key for m in self.remembered}
        held = self.state.desired.keys()
        held |= {k for k, m in self.observed().items() if m.state in LIVE}
        return held

    def entry(self, key: Key) -> ModelConfig | None:
        """The model entry this pod was told to host for ``key`` (as it has it); None
        when it has none, or one that does not validate."""
        if self.state is None:
            return next((m for m in self.remembered if m.key == key), None)
        told = next((m for m in self.state.desired.models if _key(m) == key), None)
        return None if told is None else model_entry(told)

    def ready_for(self, key: Key) -> bool:
        if self.state is None or self.state.actual.draining:
            return False
        seen = self.observed().get(key)
        return seen is not None and seen.state == "ready"
