"""The control messages between the serving process and the forward process.

Loads, warm-ups and unloads go over the control pipe (pickled, one request and
its reply at a time); batches take the run pipe (``wire``, ``pipe``). Each
request is one of the types below and the child answers each with ``Loaded``,
``Done`` or ``Failed``; anything else is an error, never taken for another
request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.runtime.wire import Array


@dataclass(frozen=True, slots=True)
class Load:
    """Load (and, with ``optimize``, trace) a module; answered ``Loaded``."""

    handle: int
    """The number the serving process gives the module (batches and unloads name it)."""
    config: dict[str, Any]
    """The model's ``ModelConfig`` as JSON: the child validates it again."""
    store: str
    """The model store its relative ``source`` is under."""


@dataclass(frozen=True, slots=True)
class Warm:
    """One warm-up forward pass of a loaded module; answered ``Done``."""

    handle: int
    arrays: list[Array]


@dataclass(frozen=True, slots=True)
class Unload:
    """Free a module (and the device's cache); answered ``Done``, also if it is not loaded."""

    handle: int


Request = Load | Warm | Unload


@dataclass(frozen=True, slots=True)
class Loaded:
    """A module is loaded: what it takes on the device."""

    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Done:
    """A warm-up or an unload went through."""


@dataclass(frozen=True, slots=True)
class Failed:
    """A request failed: the reason, for the model's status."""

    message: str


Reply = Loaded | Done | Failed
