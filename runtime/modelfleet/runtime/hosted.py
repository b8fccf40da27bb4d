"""One hosted model version: its module, queue, admission rules and state."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from enum import StrEnum
from typing import Protocol

import numpy as np

from modelfleet.runtime.batcher import ModelQueue, Pending
from modelfleet.runtime.cache import ResultCache, cache_key
from modelfleet.runtime.config import ModelConfig, Warmup
from modelfleet.runtime.devicemem import Footprint
from modelfleet.runtime.errors import expired_error
from modelfleet.runtime.inbound import Inbound
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import NP_DTYPES, Array, InferRequest
from modelfleet.runtime.ratelimit import TokenBucket
from modelfleet.runtime.recent import RecentLatencies
from modelfleet.runtime.service import Arrivals, ServiceTime
from modelfleet.serving.errors import BadRequest, DeadlineExceeded, RateLimited, Unavailable

log = logging.getLogger("modelfleet.runtime")

# Settings that need a fresh load when they change; the rest apply in place.
RELOAD_FIELDS = (
    "source", "format", "architecture", "architecture_kwargs", "sha256", "trusted",
    "inputs", "outputs", "optimize",
)  # fmt: skip
ADMIT_WITHIN = 0.85
"""A request is admitted only when its expected wait and its own forward pass fit in
this share of its deadline. The estimate is a mean; the margin is for the spread
around it: admitted at up to 100%, 1.6-2.2% of the refusals of a class at 2x its
capacity came as expirations after the whole 1.5 s deadline (tests/runtime/
test_overload.py), the wait a refusal at admission exists to spare."""


class State(StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class ModelQueues(Protocol):
    """The executor as its models see it: it holds every model's queue, under ``cond``.

    The whole executor (loading, warm-up, running batches) is ``executor.Executor``;
    a hosted model only queues its requests there and asks how long they would wait.
    """

    metrics: RuntimeMetrics
    cond: threading.Condition
    """The lock of the queues (the device thread shares them with the event loop)."""

    def submit(self, model: HostedModel, item: Pending) -> Pending | None:
        """Queues a request; returns a lower-priority one it displaced from a full
        queue (raises ``Unavailable`` when it displaces none)."""
        ...

    def would_refuse(self, model: HostedModel, level: int, inbound: int = 0) -> bool:
        """Whether ``model``'s queue is full for a request of ``level`` (``inbound``
        more requests on their way to it)."""
        ...

    def expected_wait(self, model: HostedModel, level: int) -> float:
        """Seconds a request of ``level`` can expect to wait before its batch starts."""
        ...

    def expire(self, model: HostedModel, item: Pending) -> bool:
        """Takes a request past its deadline out of the queue; False if it left already."""
        ...

    def arriving(self, model: HostedModel, delta: int) -> None:
        """Counts requests being received for ``model`` (eager batching waits for them)."""
        ...


class HostedModel:
    def __init__(self, config: ModelConfig, worker: ModelQueues, *, default_level: int) -> None:
        self.config = config
        self.worker = worker
        self.default_level = default_level
        self.state = State.LOADING
        self.reason: str | None = None
        self.module: object | None = None
        """What the executor loaded (``Executor.load``): the module itself on the
        device thread, or its handle in the forward process."""
        self.memory_bytes = 0
        self.footprint = Footprint()
        """Device memory as measured by the executor: weights at load, peak working
        memory per warm-up batch size, what came back at unload (None: not measured)."""
        self.queue = ModelQueue(
            name=config.name,
            version=config.version,
            priority=config.priority,
            batching=config.batching,
            max_size=config.queue.max_size,
        )
        self.limiter: TokenBucket | None = None
        self.cache: ResultCache | None = None
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.served = 0
        self.errors = 0
        self.shed = 0
        self.inbound = Inbound()
        """Requests the front door let in whose REST handler has not started."""
        self.objective_met = 0
        self.objective_missed = 0
        """Answered requests within / past the latency objective (when one is set)."""
        """Requests refused or dropped by admission (queue full, deadline, rate limit,
        displaced, expired): counted in ``errors`` too."""
        self.service = ServiceTime()
        self.arrivals = Arrivals()
        """Rows admitted per second per level: how fast this model's work arrives."""
        """Measured forward time per row (warm-up, then every batch): admission's
        estimate of how long the queued work takes."""
        self.recent = RecentLatencies()
        """Latencies of the last successful requests (the p99 the admin state reports)."""
        self.loaded_at = 0.0
        """Wall-clock time (epoch seconds) when this copy became ready; 0 before."""
        self.metrics = worker.metrics.for_model(*config.key)
        self.apply_settings(config)

    @property
    def key(self) -> tuple[str, str]:
        return self.config.key

    def apply_settings(self, config: ModelConfig) -> None:
        """Applies the settings that need no reload: batching, queue, limits, cache."""
        old = self.config
        self.config = config
        with self.worker.cond:
            self.queue.priority = config.priority
            self.queue.batching = config.batching
            self.queue.max_size = config.queue.max_size
        if self.limiter is None or old.rate_limit != config.rate_limit:
            self.limiter = (
                TokenBucket(config.rate_limit, time.monotonic()) if config.rate_limit else None
            )
        if self.cache is None or old.cache != config.cache:
            self.cache = ResultCache(config.cache.max_bytes) if config.cache.enabled else None

    def needs_reload(self, config: ModelConfig) -> bool:
        return any(getattr(self.config, f) != getattr(config, f) for f in RELOAD_FIELDS)

    # -- serving ---------------------------------------------------------------

    def budget_s(self, *timeouts_us: int | None) -> float:
        """The request's deadline from now: the model's ``queue.timeout_ms``, which
        Triton's ``timeout`` (and the gateway's header) can only shorten."""
        budget = self.config.queue.timeout_ms / 1000.0
        for us in timeouts_us:
            if us:
                budget = min(budget, us / 1e6)
        return budget

    def wait_ahead(self, level: int, budget_s: float, rows: int = 1) -> tuple[float, bool]:
        """The wait a request of ``level`` can expect now before its batch starts, and
        whether that and its own ``rows`` would end past ``budget_s`` (with the
        admission margin, ``ADMIT_WITHIN``). Counts nothing."""
        expected = self.worker.expected_wait(self, level)
        late = expected + rows * self.service.seconds_per_row > budget_s * ADMIT_WITHIN
        return expected, late

    def refusal(
        self,
        level: int | None,
        budget_s: float,
        *,
        rows: int = 1,
        wait: bool = True,
        door: bool = False,
    ) -> Unavailable | None:
        """Why a request of ``level`` (None: not known yet, assume the highest) with
        ``budget_s`` to its deadline cannot be served, or None. Cheap: called before
        the body is read, and again once its priority and timeout are known.
        ``door``: asked by the front door, which counts the requests it let in that
        are not queued yet (``inbound``)."""
        name, version = self.key
        if self.state is not State.READY:
            return self._shed(
                "not_ready", level,
                Unavailable(f"model '{name}' version '{version}' is {self.state}", retry_after_s=1),
            )  # fmt: skip
        effective = 1 if level is None else level or self.default_level
        if self.worker.would_refuse(self, effective, self.inbound.count() if door else 0):
            return self._shed("queue_full", level, self.queue.full_error())
        if not wait:
            return None
        expected, late = self.wait_ahead(effective, budget_s, rows)
        self.metrics.expected_wait.set(expected)
        if late:
            return self._shed(
                "deadline", level,
                DeadlineExceeded(
                    f"model '{name}' version '{version}' cannot answer within the request's "
                    f"deadline: {budget_s * 1000:.0f} ms left, about {expected * 1000:.0f} ms "
                    "of work queued ahead of it",
                    retry_after_s=max(1.0, expected - budget_s),
                ),
            )  # fmt: skip
        return None

    def _shed(self, reason: str, level: int | None, error: Unavailable) -> Unavailable:
        self.count_shed(reason, level or self.default_level)
        return error

    def count_shed(self, reason: str, level: int) -> None:
        self.shed += 1
        self.metrics.shed(reason, level)

    def check_admission(
        self, now: float, level: int, budget_s: float, rows: int, *, decided: bool = False
    ) -> None:
        """Raises when the request cannot be admitted; ``decided``: the server
        already checked this level and budget (only the rate limit is left)."""
        if not decided:
            refused = self.refusal(level, budget_s, rows=rows)
            if refused is not None:
                raise refused
        if self.limiter is not None:
            wait = self.limiter.try_take(now)
            if wait > 0:
                self.count_shed("rate_limit", level)
                raise RateLimited(
                    f"model '{self.config.name}' is limited to "
                    f"{self.limiter.rate:g} requests/s; retry in {wait:.2f} s",
                    retry_after_s=wait,
                )

    async def infer(
        self,
        request: InferRequest,
        *,
        timeout_us: int | None = None,
        decided: tuple[int, float] | None = None,
    ) -> tuple[list[Array], bool]:
        """Queues the request and waits for its slice of a batch. ``decided``: the
        (level, budget) the server's early admission already accepted.

        Returns the outputs and whether they came from the cache.
        """
        now = time.monotonic()
        # The level admission decided on (the gateway's header or gRPC metadata first,
        # else the request's own priority parameter), else the request's own.
        level = decided[0] if decided is not None else request.priority or self.default_level
        budget_s = self.budget_s(request.timeout_us, timeout_us)
        same = decided is not None and decided[0] == level and decided[1] <= budget_s
        self.check_admission(now, level, budget_s, request.rows, decided=same and request.rows == 1)
        key = None
        if self.cache is not None:
            key = cache_key(self.config.name, self.config.version, request.arrays)
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
        group, length = self.batch_group(request.arrays)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Array]] = loop.create_future()
        item = Pending(
            payload=request.arrays,
            rows=request.rows,
            level=level,
            enqueued_at=now,
            deadline=now + budget_s,
            future=future,
            group=group,
            length=length,
            due=now + min(budget_s, (self.config.latency_objective_ms or math.inf) / 1000.0),
        )
        try:
            displaced = self.worker.submit(self, item)  # 503 at once when full
        except Unavailable:
            self.count_shed("queue_full", level)
            raise
        self.metrics.admitted(level)
        self.arrivals.add(level, request.rows, now)
        if displaced is not None and not displaced.future.done():
            self.count_shed("displaced", displaced.level)
            displaced.future.set_exception(
                Unavailable(
                    f"shed: a higher-priority request for model '{self.config.name}' took "
                    "this request's place in its full queue",
                    retry_after_s=1,
                )
            )
        self._enter()
        timer = loop.call_later(budget_s, self._on_deadline, item)
        try:
            outputs = await future
        finally:
            timer.cancel()
            self._leave()
        if key is not None and self.cache is not None:
            self.cache.put(key, outputs)
        return outputs, False

    def batch_group(
        self, arrays: list[Array]
    ) -> tuple[tuple[tuple[tuple[int, ...], ...], int], int]:
        """(group, length) of a request: it shares a batch only with requests of its
        group, the shapes of its inputs past dim 0 (with ``batching.pad``: the padded
        length replaced by the bucket, which is the group's second item); ``length``
        is its own length along the padded dimension (0 without padding)."""
        pad = self.config.batching.pad
        shapes = [a.shape[1:] for a in arrays]
        if pad is None:
            return (tuple(shapes), 0), 0
        lengths = {
            spec.name: a.shape[pad.axis]
            for spec, a in zip(self.config.inputs, arrays, strict=True)
            if spec.name in pad.inputs
        }
        length = max(lengths.values())
        if len(set(lengths.values())) > 1:
            raise BadRequest(
                f"inputs {', '.join(repr(n) for n in lengths)} of model '{self.config.name}' "
                f"are padded together and must agree on dimension {pad.axis}; got "
                + ", ".join(f"{n}: {v}" for n, v in lengths.items())
            )
        bucket = pad.bucket(length)
        if bucket is None:
            raise BadRequest(
                f"input '{next(iter(lengths))}' has length {length} in dimension {pad.axis}, "
                f"longer than the largest padding bucket of model '{self.config.name}' "
                f"({pad.buckets[-1]})"
            )
        for spec, i in zip(self.config.inputs, range(len(shapes)), strict=True):
            if spec.name in pad.inputs:
                shape = list(shapes[i])
                shape[pad.axis - 1] = bucket
                shapes[i] = tuple(shape)
        return (tuple(shapes), bucket), length

    def _on_deadline(self, item: Pending) -> None:
        """The deadline passed: a request still queued is answered 503, never run."""
        if self.worker.expire(self, item):
            self.fail_expired(item)

    def fail_expired_all(self, items: list[Pending]) -> None:
        for item in items:
            self.fail_expired(item)

    def fail_expired(self, item: Pending) -> None:
        """Answers a request the worker found past its deadline in the queue."""
        if not item.future.done():
            self.count_shed("expired", item.level)
            item.future.set_exception(expired_error(self.key, time.monotonic() - item.enqueued_at))

    def _enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def _leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    # -- warm-up ---------------------------------------------------------------

    def warmup_batches(self) -> list[list[Array]]:
        """The warm-up inputs: each batch-size bucket up to the maximum."""
        warm: Warmup = self.config.warmup
        if not warm.enabled:
            return []
        limit = self.config.batching.max_batch_size
        sizes = list(warm.batch_sizes) or sorted(
            {2**i for i in range(int(math.log2(limit)) + 1)} | {limit}
        )
        pad = self.config.batching.pad
        rng = np.random.default_rng(0)
        batches = []
        for bucket in pad.buckets if pad is not None else (1,):
            for size in sizes:
                arrays = []
                for spec in self.config.inputs:
                    dims = [d if d > 0 else 1 for d in spec.shape]
                    if pad is not None and spec.name in pad.inputs:
                        dims[pad.axis] = bucket
                    shape = (size, *dims[1:])
                    dtype = NP_DTYPES[spec.datatype]
                    if spec.datatype == "BYTES":
                        arrays.append(np.full(shape, b"", dtype=object))
                    elif warm.data == "random" and dtype.kind == "f":
                        arrays.append(rng.standard_normal(shape).astype(dtype))
                    else:
                        arrays.append(np.zeros(shape, dtype=dtype))
                batches.extend([arrays] * warm.iterations)
        return batches
