"""The runtime process's state: executor, repository, drain flag."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import torch

from modelfleet.runtime.affinity import pin_this_thread, split_cpus
from modelfleet.runtime.config import RuntimeDocument, ServerConfig
from modelfleet.runtime.device import DeviceWorker
from modelfleet.runtime.executor import Executor
from modelfleet.runtime.forward import pick_device
from modelfleet.runtime.forward_process import ForwardProcess
from modelfleet.runtime.loop_dispatcher import LoopDispatcher
from modelfleet.runtime.malloc import retain_freed_memory
from modelfleet.runtime.metrics import LAG_PERIOD_S, RuntimeMetrics
from modelfleet.runtime.multidevice import DeviceWorkers
from modelfleet.runtime.repository import Repository
from modelfleet.serving import heap
from modelfleet.version import VERSION

log = logging.getLogger("modelfleet.runtime")


class Runtime:
    VERSION = VERSION

    def __init__(self, document: RuntimeDocument) -> None:
        self.config: ServerConfig = document.server
        self.initial = document
        sys.setswitchinterval(self.config.gil_switch_interval_us / 1e6)
        retain_freed_memory(self.config.retain_freed_memory_mb)  # the device thread's passes
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.device_cpus: set[int] | None = None
        if self.config.device_cpus:
            self.device_cpus, others = split_cpus(self.config.device_cpus)
            pin_this_thread(others)  # threads started from here on inherit it
            where = "forward process" if self.config.executor == "process" else "device thread"
            log.info("%s on CPU %s, the rest of the process on CPU %s",
                     where, sorted(self.device_cpus), sorted(others))  # fmt: skip
        self.metrics = RuntimeMetrics()
        self.worker: Executor = build_executor(self.config, self.metrics, self.device_cpus)
        self.repository = Repository(self.config, self.worker, self.metrics)
        self.draining = False
        self.started = False
        self._lag_probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the executor and loads the initial models (warm-up included)."""
        self.worker.start()
        self._lag_probe = asyncio.create_task(probe_loop_lag(self.metrics))
        log.info("runtime on %s; loading %d model(s)", self.worker.device, len(self.initial.models))
        await self.repository.apply(self.initial.models, wait=True)
        self.started = True

    def is_ready(self) -> bool:
        return (
            self.started
            and not self.draining
            and not self.repository.loading()
            and self.forward_process_failure() is None
        )

    def forward_process_failure(self) -> str | None:
        """Why the forward process is gone (``executor: process``); None while it runs."""
        return self.worker.failure()

    async def drain(self, grace_s: float | None = None) -> bool:
        """Readiness false, new requests refused, queued and in-flight ones finish.

        Returns True when everything finished within the grace period.
        """
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        self.draining = True
        models = list(self.repository.all_models())
        log.info("draining: %d request(s) in flight", sum(m.inflight for m in models))
        deadline = time.monotonic() + grace
        try:
            await asyncio.wait_for(asyncio.gather(*(m.idle.wait() for m in models)), timeout=grace)
        except TimeoutError:
            left = sum(m.inflight for m in models)
            log.warning("drain grace of %.1f s ran out with %d request(s) in flight", grace, left)
            return False
        log.info("drained in %.2f s", grace - (deadline - time.monotonic()))
        return True

    async def close(self) -> None:
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        await self.repository.close()
        await self.worker.stop()
        heap.release()  # what the runtime held may go


async def probe_loop_lag(metrics: RuntimeMetrics) -> None:
    """Sets a timer every ``LAG_PERIOD_S`` and records how late the loop ran it; at
    each, freezes the long-lived objects again once an unload's garbage is collected."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LAG_PERIOD_S
        await asyncio.sleep(LAG_PERIOD_S)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))
        heap.refreeze()


def build_executor(
    config: ServerConfig, metrics: RuntimeMetrics, cpus: set[int] | None
) -> Executor:
    """The executor ``config.executor`` names: forward passes on a device thread of
    this process, or in a child process that the event loop feeds."""
    device = pick_device(config.device)
    aging_ms = config.aging_ms or 0.0
    if config.executor == "thread":
        gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 0
        if gpus > 1:  # several GPUs visible to the pod: a device worker for each
            return DeviceWorkers([
                DeviceWorker(torch.device("cuda", i), metrics, aging_ms=aging_ms, cpus=cpus,
                             nice=config.forward_nice, yield_batch_ms=config.yield_batch_ms)
                for i in range(gpus)
            ])  # fmt: skip
        return DeviceWorker(device, metrics, aging_ms=aging_ms, cpus=cpus,
                            nice=config.forward_nice, yield_batch_ms=config.yield_batch_ms,
                            express=config.express_lane and device.type == "cpu")  # fmt: skip

    def spawn(loop: asyncio.AbstractEventLoop) -> ForwardProcess:
        return ForwardProcess(
            str(device),
            torch_threads=config.torch_threads,
            cpus=cpus,
            retain_mb=config.retain_freed_memory_mb,
            nice=config.forward_nice,
            loop=loop,
        )

    return LoopDispatcher(
        device, metrics, aging_ms=aging_ms, spawn=spawn, yield_batch_ms=config.yield_batch_ms,
        express=config.express_lane and device.type == "cpu",
    )  # fmt: skip
