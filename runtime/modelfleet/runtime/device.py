"""The device worker (``executor: thread``): one per device, runs the scheduler's
batches one at a time.

Forward passes run on a single dedicated thread under ``torch.inference_mode``,
off the event loop; while a batch runs, requests keep arriving and collecting
into the next batches.

With ``express`` (``server.express_lane``, CPU devices), a second thread, the
express lane, runs a batch of a strictly higher class (request level, then model
priority) while the device thread is busy with a lower one: a high-priority
request then waits for no low-priority batch in progress, and the OS shares the
CPU between the two forward passes (the device thread's ``nice`` puts the low one
behind). Only one batch runs on the express lane at a time, and none while a job
(warm-up, a memory reading, an unload) runs on the device thread.
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

import numpy as np
import torch

from modelfleet.runtime.affinity import lower_this_thread, pin_this_thread
from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.devicemem import DeviceMemory, Ledger, device_memory, is_out_of_memory
from modelfleet.runtime.dispatch import Dispatch, padded_inputs
from modelfleet.runtime.errors import ModelFailure, ModelLoadError, out_of_memory_error
from modelfleet.runtime.forward import forward
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.loader import load_module, module_bytes
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import Array
from modelfleet.runtime.scheduler import express_level, pick, rank

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
        yield_batch_ms: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        cpus: set[int] | None = None,
        memory: DeviceMemory | None = None,
        split_on_oom: bool = True,
        nice: int = 0,
        express: bool = False,
    ) -> None:
        super().__init__(
            device, metrics, aging_ms=aging_ms, yield_batch_ms=yield_batch_ms, clock=clock
        )
        self.cpus = cpus
        """CPUs the device thread confines itself to (``None``: wherever the OS puts it)."""
        self.nice = nice
        """How much lower the device thread's CPU priority is than the event loop's
        (``server.forward_nice``)."""
        self.ledger = Ledger(memory or device_memory(device))
        """The device's allocator statistics and what the runtime measured with them."""
        self.split_on_oom = split_on_oom
        """A batch of several requests that runs out of device memory is split in two
        halves, each tried once more; without it (or for one request) it fails with 503."""
        self._jobs: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._between = threading.Lock()
        """Held by the device thread while it runs a batch or a job."""
        self._thread: threading.Thread | None = None
        self.express = express
        """Whether a higher class's batch may run on the express lane beside a lower one."""
        self._running: tuple[float, int] | None = None
        """The class (level, -priority) of the batch running on the device thread."""
        self._express_busy = threading.Lock()
        """Held by the express lane while it runs a batch, and by a job on the device thread."""
        self._express_thread: threading.Thread | None = None
        self._lane_wake = threading.Condition(self.cond_lock)
        """What the express lane waits on (the device thread waits on ``self.cond``, under
        the same lock): it is woken only when it may have a batch to run, so that a
        request of the class in progress costs no wake-up of a thread that ignores it."""

    # -- the executor, called from the event loop -------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="modelfleet-device", daemon=True)
        self._thread.start()
        if self.express:
            self._express_thread = threading.Thread(
                target=self._run_express, name="modelfleet-express", daemon=True
            )
            self._express_thread.start()

    async def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify()
            self._lane_wake.notify()
        for thread in (self._thread, self._express_thread):
            if thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, thread.join)

    async def load(self, model: HostedModel, store: str) -> int:
        """Loads the module on an executor thread (the device thread goes on serving).

        The allocated bytes are read on the device thread, between two batches, before
        and after the load: the difference is the version's weights when no other load
        ran meanwhile (else the bytes of its parameters and buffers)."""
        ledger = self.ledger
        started = ledger.load_began()
        alone = ledger.loads_in_flight == 1
        try:
            before = await self.run_on_device(ledger.memory.allocated)
            module = await asyncio.get_running_loop().run_in_executor(
                None, load_module, model.config, store, self.device
            )
            model.module = module
            after = await self.run_on_device(ledger.memory.allocated)
            quiet = alone and ledger.quiet_since(started + 1, in_flight=1)
        finally:
            ledger.load_ended()
        weights = ledger.weights(before, after, module_bytes(module), quiet)
        model.footprint.weights_bytes = weights if ledger.memory.measured else None
        model.metrics.memory(model.footprint)
        return weights

    async def warm(self, model: HostedModel, arrays: Sequence[Array]) -> None:
        """One forward pass on the device thread, between two batches; its peak
        working memory is measured (peak statistics reset before the pass)."""
        run = functools.partial(
            forward, self._module(model), arrays, model.config.outputs, self.device
        )
        rows = len(arrays[0]) if arrays else 0
        try:
            await self.run_on_device(
                functools.partial(self.ledger.measure_pass, model.footprint, rows, run)
            )
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.ledger.memory.empty_cache()
            name, version = model.key
            raise ModelLoadError(
                f"model '{name}' version '{version}' ran out of device memory warming up a "
                f"batch of {rows} rows: lower batching.max_batch_size or give it more memory"
            ) from exc
        model.metrics.memory(model.footprint)

    async def unload(self, model: HostedModel) -> None:
        """Frees the module while no batch runs, returns the cached blocks
        (``empty_cache``) and checks that the version's memory came back."""
        name, version = model.key

        def free_and_check() -> None:
            before = self.ledger.memory.allocated()

            def free() -> None:
                model.module = None

            check = self.ledger.check_unload(model.key, model.footprint, before, free)
            if check is not None:
                self.metrics.unloaded(name, version, check)

        # No batch may run while the memory is read: at once when the device is idle,
        # else on the device thread between two batches.
        if self._between.acquire(blocking=False):
            try:
                if self._express_busy.acquire(blocking=False):
                    try:
                        free_and_check()
                    finally:
                        self._express_busy.release()
                    return
            finally:
                self._between.release()
        await self.run_on_device(free_and_check)

    def failure(self) -> str | None:
        return None  # the device thread lives as long as the runtime

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
            self._wake(model)
        return displaced

    def arriving(self, model: HostedModel, delta: int) -> None:
        """Counts requests being received for ``model`` (eager batching waits for them).
        The device thread is woken only when the last arrival settles with requests
        queued: with none, nothing waits on the count (and a request refused once its
        body is read would otherwise cost two thread switches)."""
        with self.cond:
            queue = model.queue
            queue.arriving += delta
            if queue.arriving == 0 and len(queue):
                self._wake(model)

    async def run_on_device(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the device thread between batches (warm-up, memory readings);
        here, at once, when the device thread is not running (before start, after stop)."""
        if self._thread is None or not self._thread.is_alive():
            return fn()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self.cond:
            self._jobs.append((fn, future))
            self.cond.notify()
        return await future

    def _higher_queued(self, running: tuple[float, int], now: float) -> bool:
        """Under the lock: whether a queue holds a strictly higher class than ``running``."""
        return any(
            len(m.queue) and rank(m.queue, now, self.aging_s)[:2] < running for m in self.models
        )

    def _wake(self, model: HostedModel) -> None:
        """Under the lock: wakes the device thread, and the express lane when a batch
        runs and ``model``'s queue now has a strictly higher class than it."""
        self.cond.notify()
        running = self._running
        queue = model.queue
        if (
            running is not None
            and len(queue)
            and rank(queue, self.clock(), self.aging_s)[:2] < running
        ):
            self._lane_wake.notify()

    # -- the device thread ----------------------------------------------------------

    def _run(self) -> None:
        if self.cpus:
            pin_this_thread(self.cpus)
        lower_this_thread(self.nice)
        while True:
            with self.cond:
                work = self._next()
            if work is None:
                return
            with self._between:
                self._do(work)
            if self._running is not None:
                with self.cond:
                    self._running = None
            # Nothing of the work may outlive it here: a warm-up job holds its module,
            # which an unload while this thread waits must be able to free.
            del work

    def _do(self, work: Any) -> None:
        """One job or one batch (with the requests that expired meanwhile)."""
        if isinstance(work, Job):
            with self._express_busy:  # no express batch runs beside a job
                self._run_job(work.fn, work.future)
            return
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
                if self.express:
                    self._running = running = rank(chosen, now, self.aging_s)[:2]
                batch, expired = chosen.take_batch(now, self.batch_rows(model, now))
                if self.express and self._higher_queued(running, now):
                    self._lane_wake.notify()  # e.g. a batch still collecting its delay
                return model, batch, expired, now
            self.cond.wait(None if wake is None else max(0.0, wake - now))

    # -- the express lane -------------------------------------------------------------

    def _run_express(self) -> None:
        if self.cpus:
            pin_this_thread(self.cpus)
        self._lane.express = True
        while True:
            with self.cond:
                work = self._next_express()
            if work is None:
                return
            with self._express_busy:
                model, batch, expired, picked_at = work
                if expired:
                    self._call_soon(model.fail_expired_all, expired)
                if batch:
                    self._execute(model, batch, picked_at)
            del work, model, batch, expired

    def _next_express(self) -> Any:
        """Under the lock: waits until the device thread runs a batch and a queue of a
        strictly higher class has a batch ready; None to stop."""
        while True:
            if self._stopping:
                return None
            running, wake = self._running, None
            if running is not None:
                now = self.clock()
                queues = [
                    m.queue
                    for m in self.models
                    if len(m.queue) and rank(m.queue, now, self.aging_s)[:2] < running
                ]
                chosen, wake = pick(queues, now, self.aging_s) if queues else (None, None)
                if chosen is not None:
                    model = next(m for m in self.models if m.queue is chosen)
                    batch, expired = chosen.take_batch(now, None, express_level(chosen, running))
                    return model, batch, expired, now
            self._lane_wake.wait(None if wake is None else max(0.0, wake - self.clock()))

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
        if error is not None and is_out_of_memory(error):
            self._out_of_memory(model, batch, picked_at, started, error)
            return
        self._finish(model, batch, outputs, error, time.perf_counter() - started)

    def _out_of_memory(
        self,
        model: HostedModel,
        batch: list[Pending],
        picked_at: float,
        started: float,
        error: Exception,
    ) -> None:
        """The batch ran out of device memory: the allocator's cache goes back, and
        the batch is split in two halves tried once more each (when it holds several
        requests and ``split_on_oom``) or fails with 503. Other models are untouched."""
        name, version = model.key
        rows = sum(p.rows for p in batch)
        self.ledger.memory.empty_cache()
        model.metrics.out_of_memory.inc()
        if not self.split_on_oom or len(batch) < 2:
            oom = out_of_memory_error(model.key, rows, split=False)
            self._finish(model, batch, None, oom, time.perf_counter() - started)
            return
        log.warning("model '%s' version '%s' ran out of device memory on a batch of %d rows; "
                    "retrying it as two halves", name, version, rows)  # fmt: skip
        self._batch_ended(model, rows, time.perf_counter() - started)
        half = _halfway(batch)
        for part in (batch[:half], batch[half:]):
            began = time.perf_counter()
            outputs: list[Array] | None = None
            failure: Exception | None = None
            try:
                arrays = self._half_inputs(model, part)
                outputs = forward(self._module(model), arrays, model.config.outputs, self.device)
            except Exception as exc:
                failure = exc
            if failure is not None and is_out_of_memory(failure):
                self.ledger.memory.empty_cache()
                model.metrics.out_of_memory.inc()
                failure = out_of_memory_error(model.key, sum(p.rows for p in part), split=True)
            self._finish(model, part, outputs, failure, time.perf_counter() - began)

    def _half_inputs(self, model: HostedModel, part: list[Pending]) -> list[Array]:
        """The inputs of half a batch (its requests' metrics were recorded with it)."""
        self._batch_started(model, sum(p.rows for p in part))
        pad = model.config.batching.pad
        if pad is not None:
            return padded_inputs(model.config.inputs, pad, part)
        if len(part) == 1:
            return list(part[0].payload)
        count = len(model.config.inputs)
        return [np.concatenate([p.payload[i] for p in part]) for i in range(count)]


def _halfway(batch: list[Pending]) -> int:
    """Where to cut a batch of several requests so that its halves hold about as many
    rows each (requests keep their order)."""
    total = sum(p.rows for p in batch)
    best, best_gap, before = 1, total, 0
    for i, p in enumerate(batch[:-1], start=1):
        before += p.rows
        gap = abs(total - 2 * before)
        if gap < best_gap:
            best, best_gap = i, gap
    return best


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
