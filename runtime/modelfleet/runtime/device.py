"""The device worker (``executor: thread``): one per device, runs the scheduler's
batches one at a time.

Forward passes run on a single dedicated thread under ``torch.inference_mode``,
off the event loop; while a batch runs, requests keep arriving and collecting
into the next batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from modelfleet.runtime.affinity import pin_this_thread
from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.dispatch import Dispatch
from modelfleet.runtime.errors import ModelFailure
from modelfleet.runtime.forward import forward
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.loader import load_module, module_bytes
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import Array
from modelfleet.runtime.scheduler import pick

log = logging.getLogger("modelfleet.runtime")
T = TypeVar("T")


@dataclass(slots=True)
class Job:
    """Work for the device thread other than a batch (warm-up)."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]


class DeviceWorker(Dispatch):
    """The device's own thread: it picks the next batch (scheduler), runs the
    forward pass and hands the results back to the event loop.

    Picking on the device thread means the device never waits for a busy event
    loop between two batches: the next batch starts the moment the previous
    one ends. Queues are shared with the loop under one lock (``self.cond``).
    This is ``executor: thread``; with ``executor: process`` the forward passes
    run in a child process and the event loop picks (``LoopDispatcher``).
    """

    def __init__(
        self,
        device: torch.device,
        metrics: RuntimeMetrics,
        *,
        aging_ms: float,
        clock: Callable[[], float] = time.monotonic,
        cpus: set[int] | None = None,
    ) -> None:
        super().__init__(device, metrics, aging_ms=aging_ms, clock=clock)
        self.cpus = cpus
        """CPUs the device thread confines itself to (``None``: wherever the OS puts it)."""
        self._jobs: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._thread: threading.Thread | None = None

    # -- the executor, called from the event loop -------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="modelfleet-device", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def load(self, model: HostedModel, store: str) -> int:
        """Loads the module on an executor thread (the device thread goes on serving)."""
        before = self._allocated()
        module = await asyncio.get_running_loop().run_in_executor(
            None, load_module, model.config, store, self.device
        )
        model.module = module
        return max(self._allocated() - before, module_bytes(module))

    async def warm(self, model: HostedModel, arrays: Sequence[Array]) -> None:
        """One forward pass on the device thread, between two batches."""
        await self.run_on_device(
            functools.partial(
                forward, self._module(model), arrays, model.config.outputs, self.device
            )
        )

    async def unload(self, model: HostedModel) -> None:
        model.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def failure(self) -> str | None:
        return None  # the device thread lives as long as the runtime

    def _allocated(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return 0

    def _module(self, model: HostedModel) -> torch.nn.Module:
        if not isinstance(model.module, torch.nn.Module):
            name, version = model.key
            raise ModelFailure(f"model '{name}' version '{version}' is not loaded")
        return model.module

    # -- the queues, called from the event loop -----------------------------------------

    def submit(self, model: HostedModel, item: Pending) -> Pending | None:
        """Queues a request and wakes the device; returns a lower-priority request
        it displaced from a full queue (503 at once when it displaces none)."""
        with self.cond:
            displaced = model.queue.push(item)
            self.cond.notify()
        return displaced

    def arriving(self, model: HostedModel, delta: int) -> None:
        """Counts requests being received for ``model`` (eager batching waits for them)."""
        with self.cond:
            model.queue.arriving += delta
            if model.queue.arriving == 0:
                self.cond.notify()

    async def run_on_device(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the device thread between batches (warm-up uses it)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self.cond:
            self._jobs.append((fn, future))
            self.cond.notify()
        return await future

    # -- the device thread ----------------------------------------------------------

    def _run(self) -> None:
        if self.cpus:
            pin_this_thread(self.cpus)
        while True:
            with self.cond:
                work = self._next()
            if work is None:
                return
            if isinstance(work, Job):
                self._run_job(work.fn, work.future)
                continue
            model, batch, expired, picked_at = work
            if expired:
                self._call_soon(model.fail_expired_all, expired)
            if batch:
                self._execute(model, batch, picked_at)

    def _next(self) -> Any:
        """Under the lock: waits for a job or a dispatchable batch; None to stop."""
        while True:
            if self._stopping:
                return None
            if self._jobs:
                return Job(*self._jobs.popleft())
            now = self.clock()
            queues = [m.queue for m in self.models if len(m.queue)]
            chosen, wake = pick(queues, now, self.aging_s) if queues else (None, None)
            if chosen is not None:
                model = next(m for m in self.models if m.queue is chosen)
                batch, expired = chosen.take_batch(now)
                return model, batch, expired, now
            self.cond.wait(None if wake is None else max(0.0, wake - now))

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(fn, *args)

    def _run_job(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        try:
            result = fn()
        except Exception as exc:
            self._call_soon(_settle, future, None, exc)
        else:
            self._call_soon(_settle, future, result, None)

    def _execute(self, model: HostedModel, batch: list[Pending], picked_at: float) -> None:
        """Runs one batch here, on the device thread."""
        started = time.perf_counter()
        outputs: list[Array] | None = None
        error: Exception | None = None
        try:
            arrays = self._inputs(model, batch, picked_at)
            outputs = forward(self._module(model), arrays, model.config.outputs, self.device)
        except Exception as exc:
            error = exc
        self._finish(model, batch, outputs, error, time.perf_counter() - started)


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
