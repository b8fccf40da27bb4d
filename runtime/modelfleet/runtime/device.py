"""The device worker: one per device, runs the scheduler's batches one at a time.

Forward passes run on a single dedicated thread under ``torch.inference_mode``,
off the event loop; while a batch runs, requests keep arriving and collecting
into the next batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.config import TensorSpec
from modelfleet.runtime.errors import ServingError
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
    """One forward pass: numpy in, numpy out, shaped and typed as declared."""
    with torch.inference_mode():
        tensors = [torch.from_numpy(a).to(device, non_blocking=True) for a in arrays]
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
            t.detach().to("cpu").numpy().astype(NP_DTYPES[spec.datatype], copy=False)
            for t, spec in zip(produced, outputs, strict=True)
        ]


class DeviceWorker:
    def __init__(
        self,
        device: torch.device,
        metrics: RuntimeMetrics,
        *,
        aging_ms: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.metrics = metrics
        self.aging_s = aging_ms / 1000.0
        self.clock = clock
        self.models: list[HostedModel] = []
        self.busy = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelfleet-device")
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, model: HostedModel) -> None:
        self.models.append(model)

    def remove(self, model: HostedModel) -> None:
        if model in self.models:
            self.models.remove(model)

    def notify(self) -> None:
        """Something was queued (or stopped arriving): look at the queues again."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, delay: float | None) -> None:
        """Waits for ``notify`` or the timeout, whichever comes first (no task per wait)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(delay, _resolve, waiter) if delay is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def run_on_device(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the device thread, between batches (warm-up uses it)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="modelfleet-device-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            now = self.clock()
            queues = [m.queue for m in self.models if len(m.queue)]
            chosen, wake = pick(queues, now, self.aging_s) if queues else (None, None)
            if chosen is None:
                await self._sleep(None if wake is None else max(0.0, wake - self.clock()))
                continue
            model = next(m for m in self.models if m.queue is chosen)
            batch, expired = chosen.take_batch(now)
            for item in expired:
                model.fail_expired(item)
            if batch:
                try:
                    await self._execute(model, batch, now)
                except Exception:  # never let one batch kill the worker
                    log.exception("batch of model '%s' version '%s' failed", *model.key)

    async def _execute(self, model: HostedModel, batch: list[Pending], now: float) -> None:
        name, version = model.key
        metrics = model.metrics
        module = model.module
        assert module is not None
        specs = model.config.outputs
        if len(batch) == 1:
            arrays = list(batch[0].payload)
        else:
            arrays = [
                np.concatenate([p.payload[i] for p in batch])
                for i in range(len(model.config.inputs))
            ]
        rows = sum(p.rows for p in batch)
        for p in batch:
            metrics.queue_time.observe(now - p.enqueued_at)
        metrics.batch_size.observe(rows)
        metrics.queue_depth.set(len(model.queue))
        started = time.perf_counter()
        self.busy = True
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, forward, module, arrays, specs, self.device
            )
            for spec, out in zip(specs, outputs, strict=True):
                if out.ndim == 0 or out.shape[0] != rows:
                    raise ModelFailure(
                        f"model '{name}' returned output '{spec.name}' with shape "
                        f"{list(out.shape)} for a batch of {rows} rows"
                    )
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, ServingError)
                else ModelFailure(
                    f"model '{name}' version '{version}' failed on a batch of {rows}: {exc}"
                )
            )
            log.warning("%s", error.message)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        finally:
            self.busy = False
            metrics.compute_time.observe(time.perf_counter() - started)
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result([o[offset : offset + p.rows] for o in outputs])
            offset += p.rows


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
