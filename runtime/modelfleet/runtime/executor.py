"""The executor: where a runtime's models are loaded and their batches run.

Two implement it, chosen by ``server.executor`` when the runtime is built:

* ``thread`` (``device.DeviceWorker``): the modules live in the serving process;
  a device thread picks each batch and runs its forward pass.
* ``process`` (``loop_dispatcher.LoopDispatcher``): the modules live in a child
  process (``forward_process``); the event loop picks each batch and ships it.

The repository and the runtime see only this protocol: they never ask which
one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from modelfleet.runtime.hosted import HostedModel, ModelQueues
from modelfleet.runtime.protocol import Array


class Executor(ModelQueues, Protocol):
    """Loads, warms and unloads models, and runs the batches of their queues.

    ``start``, ``stop`` and the queue methods run on the event loop; ``load``,
    ``warm`` and ``unload`` do their blocking work off it, beside the batches of
    the models already serving.
    """

    device: torch.device
    """Where the forward passes run."""

    def start(self) -> None:
        """Starts running batches (on the event loop, before any model is loaded)."""
        ...

    async def stop(self) -> None:
        """Stops running batches and frees what the executor holds (its process)."""
        ...

    async def load(self, model: HostedModel, store: str) -> int:
        """Loads ``model.config``'s module into ``model.module`` (the model is not
        routable yet) and returns the bytes it takes on the device; raises
        ``ModelLoadError`` or the loader's error."""
        ...

    async def warm(self, model: HostedModel, arrays: Sequence[Array]) -> None:
        """One warm-up forward pass of the loaded module."""
        ...

    async def unload(self, model: HostedModel) -> None:
        """Frees ``model.module`` (after a failed load too) and clears it."""
        ...

    def add(self, model: HostedModel) -> None:
        """Makes a loaded model's queue one the executor picks batches from."""
        ...

    def remove(self, model: HostedModel) -> None:
        """Stops picking from a model's queue (it is drained)."""
        ...

    def failure(self) -> str | None:
        """Why the executor can run nothing any more (its process died); None while it can."""
        ...
