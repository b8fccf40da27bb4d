"""The scheduler on the event loop, for ``executor: process``.

With the forward passes in a child process (``forward_process``), a device
thread in the serving process would only pick batches and pickle them, and
every request would cost a wake-up of that thread and a hand-over of the GIL
between it and the event loop, on the same CPUs that parse and answer HTTP.
Here the event loop does the scheduler's work itself, at the moments when
something can change:

* a request is queued, or the last request being received for a model is
  decoded (eager batching);
* the child answers a batch (a pipeline slot is free);
* a model's ``max_queue_delay_ms`` runs out (a timer).

Each time, it fills the free pipeline slots with the scheduler's choices
(request priority, aging, model priority: the same ``pick`` as the device
thread). At concurrency 1 a request goes from its handler straight into the
pipe to the child: no thread in between.

With the express lane (on by default on a CPU device) a batch of a strictly
higher class than the one running goes down the child's express pipe, whose own
thread runs it beside the lower batch (one at a time); while that lane is busy
the next such batch waits for it, never in the main pipe behind a lower batch
(lower batches fill the main pipe meanwhile: it costs the higher one nothing).
Both main slots then stay filled whatever is active: a lower model's next batch
waits in the pipe, so the child never idles between two of its batches while the
serving process answers the last one (holding the second slot back for a 50/s
high stream cost the CNN 5-10% of its goodput at saturation, 2026-12-04).
Without the express lane (a GPU) the second slot is left empty for a model
while a model of higher priority here is active (requests queued, or arriving
lately): a high-priority request then waits for one lower batch at most, the
one running, not two.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.dispatch import Dispatch
from modelfleet.runtime.errors import ModelFailure, ModelLoadError
from modelfleet.runtime.forward_process import ForwardProcess, RemoteModel
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import Array
from modelfleet.runtime.scheduler import express_level, pick, rank

Spawn = Callable[[asyncio.AbstractEventLoop], ForwardProcess]
"""Starts the forward process, its pipe read by the given event loop."""


class LoopDispatcher(Dispatch):
    """The process executor: the event loop picks each batch and hands it to
    the forward process, and finishes it when the answer arrives.

    Every method runs on the event loop (loads, warm-ups and unloads wait for
    the child on an executor thread); the lock (``cond``) is kept only because
    the models' settings are applied under it.
    """

    _timer: asyncio.TimerHandle | None = None
    _timer_at = math.inf
    _pumping = False
    """A pump is running (a re-entrant call only sets ``_again``)."""
    _again = False

    def __init__(
        self,
        device: torch.device,
        metrics: RuntimeMetrics,
        *,
        aging_ms: float,
        spawn: Spawn,
        yield_batch_ms: float | None = None,
        express: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            device, metrics, aging_ms=aging_ms, yield_batch_ms=yield_batch_ms, clock=clock
        )
        self._spawn = spawn
        self.express = express
        """Whether a strictly higher class's batch may take the child's express lane."""
        self._classes: deque[tuple[float, int]] = deque()
        """The classes (request level, -model priority) of the batches on the main
        lane, in order: the first is the one running."""
        self.process: ForwardProcess | None = None
        """The forward process, from ``start`` on."""

    # -- the executor -------------------------------------------------------------------

    def start(self) -> None:
        """Starts the forward process."""
        self._loop = asyncio.get_running_loop()
        self.process = self._spawn(self._loop)

    async def stop(self) -> None:
        """Stops dispatching, then closes the forward process (it exits on EOF)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        process = self.process
        if process is not None:
            process.detach()
            await asyncio.get_running_loop().run_in_executor(None, process.close)

    async def load(self, model: HostedModel, store: str) -> int:
        """Loads the module in the forward process (beside the batches it runs)."""
        process = self.process
        if process is None:
            raise ModelLoadError("the forward process is not started")
        remote = await asyncio.get_running_loop().run_in_executor(
            None, process.load, model.config, store
        )
        model.module = remote
        return remote.memory_bytes

    async def warm(self, model: HostedModel, arrays: Sequence[Array]) -> None:
        """A warm-up forward pass in the forward process, beside serving."""
        remote = model.module
        if not isinstance(remote, RemoteModel):
            name, version = model.key
            raise ModelFailure(f"model '{name}' version '{version}' is not loaded")
        await asyncio.get_running_loop().run_in_executor(
            None, remote.process.warm, remote.handle, arrays
        )

    async def unload(self, model: HostedModel) -> None:
        """Frees the module in the forward process (a dead one holds nothing)."""
        remote = model.module
        if isinstance(remote, RemoteModel):
            await asyncio.get_running_loop().run_in_executor(
                None, remote.process.unload, remote.handle
            )
        model.module = None

    def failure(self) -> str | None:
        process = self.process
        return None if process is None or process.alive() else process.died

    # -- the queues ---------------------------------------------------------------------

    def submit(self, model: HostedModel, item: Pending) -> Pending | None:
        with self.cond:
            displaced = model.queue.push(item)
        self._pump()
        return displaced

    def arriving(self, model: HostedModel, delta: int) -> None:
        with self.cond:
            model.queue.arriving += delta
            settled = model.queue.arriving == 0
        if settled:
            self._pump()

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)  # already on the event loop

    # -- picking and dispatching ------------------------------------------------------

    def _pump(self) -> None:
        """Fills the free pipeline slots. Re-entrant calls (a batch failing at
        once, e.g. the child is gone) only ask the running one to look again."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._fill()
        finally:
            self._pumping = False

    def _fill(self) -> None:
        process = self.process
        waiting: set[int] = set()
        """The queues (``id``) whose next batch waits for the express lane, so that a
        lower one may fill the main lane meanwhile."""
        while not self._stopping and process is not None:
            now = self.clock()
            with self.cond:
                queues = [
                    m.queue for m in self.models if len(m.queue) and id(m.queue) not in waiting
                ]
                chosen, wake = pick(queues, now, self.aging_s) if queues else (None, None)
                if chosen is None:
                    self._wake_at(wake, now)
                    return
                model = next(m for m in self.models if m.queue is chosen)
                klass = rank(chosen, now, self.aging_s)[:2]
                # Of a strictly higher class than the batch running on the main lane.
                higher = process.busy() and bool(self._classes) and klass < self._classes[0]
                express = self.express and higher and process.express_free()
                if not express:
                    if self.express and higher:
                        waiting.add(id(chosen))  # for the express lane, not behind a lower batch
                        continue
                    if not process.has_room():
                        return
                    if not self.express and process.busy() and self.higher_active(model, now):
                        return  # the slot stays free for the higher class (refilled at the answer)
                cap = express_level(chosen, self._classes[0]) if express else None
                batch, expired = chosen.take_batch(now, self.batch_rows(model, now), cap)
            if expired:
                model.fail_expired_all(expired)
            if batch:
                self._dispatch(model, batch, now, klass, express=express)

    def _wake_at(self, wake: float | None, now: float) -> None:
        """Arms the timer for the earliest batch that is not ready yet."""
        if wake is None or (self._timer is not None and self._timer_at <= wake):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = wake
        self._timer = self._loop.call_later(max(0.0, wake - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._pump()

    def _dispatch(
        self,
        model: HostedModel,
        batch: list[Pending],
        picked_at: float,
        klass: tuple[float, int],
        *,
        express: bool = False,
    ) -> None:
        """Hands one batch to the forward process (``express``: down its express lane);
        ``done`` runs on the event loop when its answer arrives, and refills the slot
        it frees."""
        assert self.process is not None
        name, version = model.key
        module = model.module
        try:
            if not isinstance(module, RemoteModel):
                raise ModelFailure(f"model '{name}' version '{version}' is not loaded")
            arrays = self._inputs(model, batch, picked_at)
        except Exception as exc:  # e.g. inputs whose variable dims do not concatenate
            self._finish(model, batch, None, exc, 0.0)
            return

        def done(outputs: list[Array] | None, error: Exception | None, seconds: float) -> None:
            if express:  # booked as a batch beside the others, not after them
                self._lane.express = True
                try:
                    self._finish(model, batch, outputs, error, seconds)
                finally:
                    self._lane.express = False
            else:
                self._classes.popleft()
                self._finish(model, batch, outputs, error, seconds)
            self._pump()

        if not express:
            self._classes.append(klass)
        self.process.submit(module.handle, arrays, done, express=express)
