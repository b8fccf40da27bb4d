"""Several GPUs in one pod (``executor: thread``): one device worker per GPU.

``DeviceWorkers`` is the executor the repository sees. Each model version it
loads is placed on one GPU, the one whose models hold the least device memory
(with equal GPUs, the one with the most free; ties go to the lowest index), and
from then on the version's requests go straight to that GPU's worker: its queue,
its device thread. Loads on different GPUs run at the same time, and so do loads
of different models on one GPU, as with a single worker.

Placement looks at memory only. Priority does not count yet: nothing is evicted
to make room for a version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

import torch

from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.device import DeviceWorker
from modelfleet.runtime.errors import ModelLoadError
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.loader import resolve_source
from modelfleet.runtime.protocol import Array

log = logging.getLogger("modelfleet.runtime")
MiB = 1024 * 1024


class DeviceWorkers:
    """The executor of a pod with several GPUs: a ``DeviceWorker`` for each."""

    def __init__(self, workers: Sequence[DeviceWorker]) -> None:
        if not workers:
            raise ValueError("DeviceWorkers needs at least one device worker")
        self.workers = list(workers)
        self.device = torch.device(self.workers[0].device.type)
        """The devices' type (each worker has its own index)."""
        self.metrics = self.workers[0].metrics
        self.cond = threading.Condition()
        """Guards a model's settings until it is placed (from then on its worker's lock)."""
        self._placed: dict[HostedModel, DeviceWorker] = {}
        self._loading: dict[HostedModel, int] = {}
        """Versions being loaded, by their estimated bytes (counted where they go)."""

    # -- placement ----------------------------------------------------------------------

    def held(self, worker: DeviceWorker) -> int:
        """Bytes a worker's versions take (measured), and those loading there (estimated)."""
        return sum(
            m.memory_bytes or self._loading.get(m, 0)
            for m, w in self._placed.items()
            if w is worker
        )

    def count(self, worker: DeviceWorker) -> int:
        return sum(1 for w in self._placed.values() if w is worker)

    def place(self, model: HostedModel, estimate: int = 0) -> DeviceWorker:
        """The GPU for ``model``: the one whose versions hold the least memory (then
        the one with fewer versions, then the lowest index)."""
        worker = min(
            self.workers, key=lambda w: (self.held(w), self.count(w), self.workers.index(w))
        )
        self._placed[model] = worker
        self._loading[model] = estimate
        model.worker = worker  # its queue is that worker's from now on
        name, version = model.key
        log.info("model '%s' version '%s' placed on %s (%.1f MiB held there)",
                 name, version, worker.device, self.held(worker) / MiB)  # fmt: skip
        return worker

    def worker_of(self, model: HostedModel) -> DeviceWorker | None:
        return self._placed.get(model)

    # -- the executor ---------------------------------------------------------------

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))

    async def load(self, model: HostedModel, store: str) -> int:
        """Places the version on a GPU (by the memory it declares, else its file's
        size, until it is measured) and loads it there."""
        estimate = model.config.memory_mb * MiB if model.config.memory_mb else 0
        if not estimate:
            with contextlib.suppress(ModelLoadError, OSError):
                estimate = resolve_source(model.config, store).stat().st_size
        worker = self.place(model, int(estimate))
        try:
            return await worker.load(model, store)
        finally:
            self._loading.pop(model, None)

    async def warm(self, model: HostedModel, arrays: Sequence[Array]) -> None:
        await self._of(model).warm(model, arrays)

    async def unload(self, model: HostedModel) -> None:
        worker = self._placed.pop(model, None)
        self._loading.pop(model, None)
        if worker is None:
            model.module = None
            return
        await worker.unload(model)

    def add(self, model: HostedModel) -> None:
        self._of(model).add(model)

    def remove(self, model: HostedModel) -> None:
        worker = self._placed.get(model)
        if worker is not None:
            worker.remove(model)

    def failure(self) -> str | None:
        return None  # device threads live as long as the runtime

    # -- the queues (a placed model calls its worker directly) -----------------------------

    def _of(self, model: HostedModel) -> DeviceWorker:
        worker = self._placed.get(model)
        if worker is None:
            name, version = model.key
            raise RuntimeError(f"model '{name}' version '{version}' is not placed on a GPU")
        return worker

    def submit(self, model: HostedModel, item: Pending) -> Pending | None:
        return self._of(model).submit(model, item)

    def would_refuse(self, model: HostedModel, level: int, inbound: int = 0) -> bool:
        worker = self._placed.get(model)
        return worker.would_refuse(model, level, inbound) if worker else False

    def expected_wait(self, model: HostedModel, level: int) -> float:
        worker = self._placed.get(model)
        return worker.expected_wait(model, level) if worker else 0.0

    def expire(self, model: HostedModel, item: Pending) -> bool:
        return self._of(model).expire(model, item)

    def arriving(self, model: HostedModel, delta: int) -> None:
        self._of(model).arriving(model, delta)
