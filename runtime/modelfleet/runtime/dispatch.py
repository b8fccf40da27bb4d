"""What both executors share: the models' queues, the wait ahead, a batch in and out.

The thread executor (``device.DeviceWorker``) and the process executor
(``loop_dispatcher.LoopDispatcher``) differ in who picks the next batch and
where its forward pass runs; everything else is here: the queues of every
model under one lock, the estimate of the work queued ahead of a request, a
batch's inputs (concatenated, or padded to its bucket) and the delivery of
its outputs, row by row, to the requests that made it up.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.config import Padding, TensorSpec
from modelfleet.runtime.errors import ModelFailure
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import Array
from modelfleet.serving.errors import ServingError

log = logging.getLogger("modelfleet.runtime")
MAX_SHARE = 0.9
"""The share of the device that higher classes are assumed to take at most while a
request waits (the wait is stretched by at most 10x)."""


class Dispatch(ABC):
    """The queues and the batch bookkeeping of an executor (see ``executor.Executor``).

    Subclasses say how a request wakes the picker (``submit``, ``arriving``) and
    how a callback reaches the event loop (``_call_soon``).
    """

    def __init__(
        self,
        device: torch.device,
        metrics: RuntimeMetrics,
        *,
        aging_ms: float,
        yield_batch_ms: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.metrics = metrics
        self.aging_s = aging_ms / 1000.0
        self.yield_batch_s = yield_batch_ms / 1000.0 if yield_batch_ms else None
        self.clock = clock
        self.models: list[HostedModel] = []
        self.cond_lock = threading.RLock()
        self.cond = threading.Condition(self.cond_lock)
        self._busy_s = 0.0
        """Expected forward seconds of the batches handed out and not finished."""
        self._busy_batches = 0
        self._last_end: float | None = None
        """When the last batch ended (perf_counter seconds)."""
        self._work_left = False
        """Whether requests were queued when it ended (the next batch followed at once)."""
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lane = threading.local()
        """``express`` is set on the thread of the thread executor's express lane, whose
        batches run beside the device thread's and are booked by their own time."""

    def add(self, model: HostedModel) -> None:
        with self.cond:
            self.models.append(model)

    def remove(self, model: HostedModel) -> None:
        with self.cond:
            if model in self.models:
                self.models.remove(model)

    def would_refuse(self, model: HostedModel, level: int, inbound: int = 0) -> bool:
        with self.cond:
            return model.queue.would_refuse(level, inbound)

    def expected_wait(self, model: HostedModel, level: int) -> float:
        """Seconds a request of ``level`` for ``model`` can expect to wait now before
        its batch starts: the measured forward time of every queued row that goes
        before it (a higher class, or its own class queued earlier) and of the
        batches running, stretched by the share of the device that the higher classes'
        arrivals will take meanwhile (they go first): ``queued / (1 - share)``, the
        share at most ``MAX_SHARE``. Without the stretch, a low-priority request
        admitted with a wait just inside its deadline expires in the queue once
        high-priority requests have overtaken it: it waits the whole deadline only
        to be refused. Queues of models not measured yet count nothing."""
        now = self.clock()
        with self.cond:
            wait, share = self._busy_s, 0.0
            for other in self.models:
                per_row = other.service.seconds_per_row
                if not per_row:
                    continue
                first = other is model or other.queue.priority >= model.queue.priority
                if len(other.queue):
                    wait += per_row * other.queue.rows_ahead(level, inclusive=first)
                higher = other is not model and other.queue.priority > model.queue.priority
                share += per_row * other.arrivals.rate_ahead(level, now, inclusive=higher)
            return wait / (1.0 - min(share, MAX_SHARE))

    def batch_rows(self, model: HostedModel, now: float) -> int | None:
        """The most rows ``model``'s next batch may take (None: its own maximum): with
        ``yield_batch_ms``, while a higher-priority model here has requests arriving
        or queued, what ``model``'s measured time per row fits in it."""
        per_row = model.service.seconds_per_row
        if self.yield_batch_s is None or not per_row:
            return None
        return max(1, int(self.yield_batch_s / per_row)) if self.higher_active(model, now) else None

    def higher_active(self, model: HostedModel, now: float) -> bool:
        """Whether a model of higher priority here has requests queued, or arriving at
        a second or more a second lately."""
        priority = model.config.priority
        return any(
            len(other.queue) or other.arrivals.rate_ahead(sys.maxsize, now, inclusive=True) >= 1.0
            for other in self.models
            if other.config.priority > priority
        )

    def expire(self, model: HostedModel, item: Pending) -> bool:
        with self.cond:
            return model.queue.expire(item)

    def _batch_started(self, model: HostedModel, rows: int) -> None:
        with self.cond:
            self._busy_s += rows * model.service.seconds_per_row
            self._busy_batches += 1

    def _batch_ended(self, model: HostedModel, rows: int, seconds: float) -> None:
        """Books a finished batch. Its service time is the device's time for it: since
        the previous batch ended when this one followed it at once (requests were
        queued then), else its forward pass. So the hand-offs between batches, and the
        waits for the GIL that a busy event loop makes them take, count: admission
        then expects the throughput the device really gives (for 10 ms sleeps in a
        busy runtime, 14% below what the forward passes alone add up to)."""
        now = time.perf_counter()
        express = getattr(self._lane, "express", False)
        with self.cond:
            last, followed = self._last_end, self._work_left
            occupied = now - last if followed and last is not None and not express else seconds
            if not express:  # an express batch ran beside the others, not after them
                self._last_end = now
                self._work_left = any(len(m.queue) for m in self.models)
            self._busy_batches = max(0, self._busy_batches - 1)
            self._busy_s = (
                max(0.0, self._busy_s - rows * model.service.seconds_per_row)
                if self._busy_batches
                else 0.0
            )
            model.service.record(rows, max(seconds, occupied))

    @abstractmethod
    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Calls ``fn(*args)`` on the event loop."""

    def _inputs(self, model: HostedModel, batch: list[Pending], picked_at: float) -> list[Array]:
        """Records the batch's metrics and returns its inputs, concatenated along dim 0
        (padded to the batch's bucket where ``batching.pad`` says so)."""
        metrics = model.metrics
        for p in batch:
            metrics.queue_time.observe(picked_at - p.enqueued_at)
        rows = sum(p.rows for p in batch)
        metrics.batch_size.observe(rows)
        metrics.queue_depth.set(len(model.queue))
        self._batch_started(model, rows)
        pad = model.config.batching.pad
        if pad is not None:
            return padded_inputs(model.config.inputs, pad, batch)
        if len(batch) == 1:
            return list(batch[0].payload)
        return [
            np.concatenate([p.payload[i] for p in batch]) for i in range(len(model.config.inputs))
        ]

    def _finish(
        self,
        model: HostedModel,
        batch: list[Pending],
        outputs: list[Array] | None,
        error: Exception | None,
        seconds: float,
    ) -> None:
        """Checks a batch's outputs and hands each request its rows (or the error)."""
        name, version = model.key
        rows = sum(p.rows for p in batch)
        model.metrics.compute_time.observe(seconds)
        self._batch_ended(model, rows, seconds)
        if outputs is not None:
            for spec, out in zip(model.config.outputs, outputs, strict=True):
                if out.ndim == 0 or out.shape[0] != rows:
                    error = ModelFailure(
                        f"model '{name}' returned output '{spec.name}' with shape "
                        f"{list(out.shape)} for a batch of {rows} rows"
                    )
                    break
        if error is not None:
            failure = (
                error
                if isinstance(error, ServingError)
                else ModelFailure(
                    f"model '{name}' version '{version}' failed on a batch of {rows}: {error}"
                )
            )
            log.warning("%s", failure.message)
            self._call_soon(_deliver, batch, None, failure)
            return
        pad = model.config.batching.pad
        trim = (
            ()
            if pad is None
            else tuple(i for i, s in enumerate(model.config.outputs) if s.name in pad.outputs)
        )
        self._call_soon(_deliver, batch, outputs, None, trim, pad.axis if pad else 1)


def padded_inputs(specs: Sequence[TensorSpec], pad: Padding, batch: list[Pending]) -> list[Array]:
    """The batch's inputs with the padded ones filled up to the batch's bucket
    (every request of a batch has the same bucket: its group)."""
    rows = sum(p.rows for p in batch)
    arrays: list[Array] = []
    for i, spec in enumerate(specs):
        parts = [p.payload[i] for p in batch]
        value = pad.inputs.get(spec.name)
        if value is None:
            arrays.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
            continue
        shape = list(parts[0].shape)
        shape[0], shape[pad.axis] = rows, batch[0].group[1]  # type: ignore[index]
        out = np.full(shape, value, dtype=parts[0].dtype)
        offset = 0
        for part in parts:
            where = (slice(offset, offset + len(part)),) + (slice(None),) * (pad.axis - 1)
            out[(*where, slice(0, part.shape[pad.axis]))] = part
            offset += len(part)
        arrays.append(out)
    return arrays


def _deliver(
    batch: list[Pending],
    outputs: list[Array] | None,
    error: Exception | None,
    trim: tuple[int, ...] = (),
    axis: int = 1,
) -> None:
    """On the event loop: each request gets its rows of the batch's outputs (the
    outputs in ``trim`` cut back to the request's own length along ``axis``)."""
    offset = 0
    for p in batch:
        if not p.future.done():
            if error is not None:
                p.future.set_exception(error)
            else:
                assert outputs is not None
                rows = slice(offset, offset + p.rows)
                mine = [o[rows] for o in outputs]
                for i in trim:
                    cut = (slice(None),) * axis + (slice(0, p.length),)
                    mine[i] = mine[i][cut]
                p.future.set_result(mine)
        offset += p.rows
