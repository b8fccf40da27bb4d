"""The device worker: one per device, runs the scheduler's batches one at a time.

Forward passes run on a single dedicated thread under ``torch.inference_mode``,
off the event loop; while a batch runs, requests keep arriving and collecting
into the next batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from modelfleet.runtime.affinity import pin_this_thread
from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.config import Padding, TensorSpec
from modelfleet.runtime.errors import ServingError
from modelfleet.runtime.forward_process import ForwardProcess
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import NP_DTYPES, Array
from modelfleet.runtime.scheduler import pick

if TYPE_CHECKING:
    from modelfleet.runtime.hosted import HostedModel

log = logging.getLogger("modelfleet.runtime")
T = TypeVar("T")


class ModelFailure(ServingError):
    """The model itself raised or returned something that does not match its outputs."""

    status = 500


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def forward(
    module: torch.nn.Module,
    arrays: Sequence[Array],
    outputs: Sequence[TensorSpec],
    device: torch.device,
) -> list[Array]:
    """One forward pass: numpy in, numpy out, shaped and typed as declared.

    BYTES inputs reach the module as they are (numpy arrays of ``bytes``)."""
    with torch.inference_mode():
        tensors = [
            a if a.dtype.kind == "O" else torch.from_numpy(a).to(device, non_blocking=True)
            for a in arrays
        ]
        result: Any = module(*tensors)
        if isinstance(result, torch.Tensor):
            produced = [result]
        elif isinstance(result, dict):
            produced = [result[spec.name] for spec in outputs]
        else:
            produced = list(result)
        if len(produced) != len(outputs):
            raise ModelFailure(
                f"the model returned {len(produced)} outputs, its config declares {len(outputs)}"
            )
        return [
            _bytes_output(t, spec.name)
            if spec.datatype == "BYTES"
            else t.detach().to("cpu").numpy().astype(NP_DTYPES[spec.datatype], copy=False)
            for t, spec in zip(produced, outputs, strict=True)
        ]


def _bytes_output(value: Any, name: str) -> Array:
    """A BYTES output (an array or nested list of ``bytes``/``str``) as an object array."""
    if isinstance(value, torch.Tensor):
        raise ModelFailure(f"output '{name}' is declared BYTES but the model returned a tensor")
    array = np.array(value, dtype=object)
    flat = array.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            flat[i] = item.encode()
        elif not isinstance(item, bytes | bytearray):
            raise ModelFailure(
                f"output '{name}' is declared BYTES but holds {type(item).__name__} values"
            )
    return array


@dataclass(slots=True)
class Job:
    """Work for the device thread other than a batch (warm-up)."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]


class DeviceWorker:
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
        self.device = device
        self.metrics = metrics
        self.aging_s = aging_ms / 1000.0
        self.clock = clock
        self.cpus = cpus
        """CPUs the device thread confines itself to (``None``: wherever the OS puts it)."""
        self.process: ForwardProcess | None = None
        """The forward process (``executor: process``, see ``LoopDispatcher``); None here."""
        self.models: list[HostedModel] = []
        self.cond = threading.Condition()
        self._busy_s = 0.0
        """Expected forward seconds of the batches handed out and not finished."""
        self._busy_batches = 0
        self._jobs: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- called from the event loop -----------------------------------------------

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

    def add(self, model: HostedModel) -> None:
        with self.cond:
            self.models.append(model)

    def remove(self, model: HostedModel) -> None:
        with self.cond:
            if model in self.models:
                self.models.remove(model)

    def submit(self, model: HostedModel, item: Pending) -> Pending | None:
        """Queues a request and wakes the device; returns a lower-priority request
        it displaced from a full queue (503 at once when it displaces none)."""
        with self.cond:
            displaced = model.queue.push(item)
            self.cond.notify()
        return displaced

    def would_refuse(self, model: HostedModel, level: int) -> bool:
        with self.cond:
            return model.queue.would_refuse(level)

    def expected_wait(self, model: HostedModel, level: int) -> float:
        """Seconds a request of ``level`` for ``model`` can expect to wait now before
        its batch starts: the measured forward time of every queued row that goes
        before it (a higher class, or its own class queued earlier) and of the
        batches running. Queues of models not measured yet count nothing."""
        with self.cond:
            wait = self._busy_s
            for other in self.models:
                per_row = other.service.seconds_per_row
                if per_row and len(other.queue):
                    first = other is model or other.queue.priority >= model.queue.priority
                    wait += per_row * other.queue.rows_ahead(level, inclusive=first)
            return wait

    def _batch_started(self, model: HostedModel, rows: int) -> None:
        with self.cond:
            self._busy_s += rows * model.service.seconds_per_row
            self._busy_batches += 1

    def _batch_ended(self, model: HostedModel, rows: int, seconds: float) -> None:
        with self.cond:
            self._busy_batches = max(0, self._busy_batches - 1)
            self._busy_s = (
                max(0.0, self._busy_s - rows * model.service.seconds_per_row)
                if self._busy_batches
                else 0.0
            )
            model.service.record(rows, seconds)

    def expire(self, model: HostedModel, item: Pending) -> bool:
        with self.cond:
            return model.queue.expire(item)

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

    def _execute(self, model: HostedModel, batch: list[Pending], picked_at: float) -> None:
        """Runs one batch here, on the device thread (``executor: thread``)."""
        name, version = model.key
        started = time.perf_counter()
        outputs: list[Array] | None = None
        error: Exception | None = None
        try:
            arrays = self._inputs(model, batch, picked_at)
            if not isinstance(model.module, torch.nn.Module):
                raise ModelFailure(f"model '{name}' version '{version}' is not loaded")
            outputs = forward(model.module, arrays, model.config.outputs, self.device)
        except Exception as exc:
            error = exc
        self._finish(model, batch, outputs, error, time.perf_counter() - started)

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


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
