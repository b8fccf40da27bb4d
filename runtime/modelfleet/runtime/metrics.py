"""Prometheus metrics of one runtime process (its own registry, so tests can
run several servers in one process)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LAG_PERIOD_S = 0.02
"""How often the loop-lag probe sets its timer."""
PROTOCOLS = ("rest", "grpc")

if TYPE_CHECKING:
    from modelfleet.runtime.devicemem import Footprint, UnloadCheck


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "modelfleet_requests_total",
            "Infer requests by model, version, protocol (rest, grpc) and outcome (ok, or "
            "the HTTP status; gRPC errors count under the HTTP status they map from).",
            (*labels, "protocol", "outcome"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "End-to-end latency of successful infer requests inside the runtime, by "
            "protocol (rest, grpc).",
            (*labels, "protocol"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "modelfleet_queue_seconds",
            "Time requests waited in the model's queue before their batch ran.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "modelfleet_compute_seconds",
            "Forward-pass time of each batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelfleet_batch_size",
            "Rows per executed batch.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "modelfleet_queue_depth",
            "Requests waiting in the model's queue.",
            labels,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "modelfleet_cache_hits_total",
            "Requests answered from the result cache.",
            labels,
            registry=self.registry,
        )
        self.device_memory = Gauge(
            "modelfleet_device_memory_bytes",
            "Device memory held by loaded models (measured).",
            registry=self.registry,
        )
        self.shed = Counter(
            "modelfleet_shed_total",
            "Requests refused or dropped without an answer, by model, priority level and "
            "reason: queue_full, deadline (the expected wait exceeds it), rate_limit, "
            "displaced (by a higher priority in a full queue), expired (in the queue), "
            "not_ready.",
            (*labels, "priority", "reason"),
            registry=self.registry,
        )
        self.admitted = Counter(
            "modelfleet_admitted_total",
            "Requests admitted into the model's queue, by priority level.",
            (*labels, "priority"),
            registry=self.registry,
        )
        self.expected_wait = Gauge(
            "modelfleet_expected_wait_seconds",
            "Queue wait admission expected at its last decision for the model (measured "
            "forward time of the work queued ahead).",
            labels,
            registry=self.registry,
        )
        self.objective = Counter(
            "modelfleet_objective_total",
            "Answered requests of models with a latency objective, by whether they met it.",
            (*labels, "met"),
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "modelfleet_model_ready",
            "1 when the model version is loaded, warm and serving.",
            labels,
            registry=self.registry,
        )

        self.weights_memory = Gauge(
            "modelfleet_model_weights_bytes",
            "Device memory of a model version's weights, measured at load (CUDA only).",
            labels,
            registry=self.registry,
        )
        self.working_memory = Gauge(
            "modelfleet_model_peak_working_bytes",
            "Peak device memory of a model version's forward pass beyond its weights, "
            "measured at each warm-up batch size (CUDA only; the largest).",
            labels,
            registry=self.registry,
        )
        self.out_of_memory = Counter(
            "modelfleet_out_of_memory_total",
            "Batches that ran out of device memory (each failed with 503, or was split).",
            labels,
            registry=self.registry,
        )
        self.reserved_after_unload = Gauge(
            "modelfleet_device_reserved_after_unload_bytes",
            "Bytes the CUDA caching allocator still reserved after the last unload "
            "(and empty_cache).",
            registry=self.registry,
        )
        self.unload_leaked = Counter(
            "modelfleet_unload_leaked_bytes_total",
            "Device memory a model version did not give back when it was unloaded "
            "(kept after the version is gone; 0 for versions that returned it all).",
            labels,
            registry=self.registry,
        )
        self.unload_leaks = Counter(
            "modelfleet_unload_leaks_total",
            "Unloads after which a model version's memory was not returned.",
            labels,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "modelfleet_event_loop_lag_seconds",
            "How late the event loop ran a timer it set every 20 ms: the time a request "
            "that arrives now waits for the loop before anything of it is read (a busy "
            "loop delays every priority alike).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def unloaded(self, model: str, version: str, check: UnloadCheck) -> None:
        """Records the memory check of an unload (the leak series outlive the version)."""
        self.reserved_after_unload.set(check.reserved_after_bytes)
        self.unload_leaked.labels(model, version).inc(check.leaked_bytes)
        if check.leaked_bytes:
            self.unload_leaks.labels(model, version).inc()

    def for_model(self, model: str, version: str) -> ModelMetrics:
        """The label children of one model version, looked up once (hot path)."""
        return ModelMetrics(self, model, version)

    def forget(self, model: str, version: str) -> None:
        """Drops the per-model series of an unloaded model."""
        for metric in (
            self.queue_time, self.compute_time, self.batch_size,
            self.queue_depth, self.cache_hits, self.model_ready, self.expected_wait,
            self.weights_memory, self.working_memory, self.out_of_memory,
        ):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(model, version)
        for protocol in PROTOCOLS:
            with contextlib.suppress(KeyError):
                self.latency.remove(model, version, protocol)


class ModelMetrics:
    """Pre-bound series of one model version, so requests skip label lookups."""

    def __init__(self, metrics: RuntimeMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._served = {
            protocol: (
                metrics.requests.labels(model, version, protocol, "ok"),
                metrics.latency.labels(model, version, protocol),
            )
            for protocol in PROTOCOLS
        }
        self.queue_time = metrics.queue_time.labels(model, version)
        self.compute_time = metrics.compute_time.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.cache_hits = metrics.cache_hits.labels(model, version)
        self.expected_wait = metrics.expected_wait.labels(model, version)
        self.out_of_memory = metrics.out_of_memory.labels(model, version)
        self._admitted: dict[int, Counter] = {}
        self._failed: dict[tuple[int, str], Counter] = {}
        self._shed: dict[tuple[str, int], Counter] = {}

    def memory(self, footprint: Footprint) -> None:
        """Publishes a version's measured footprint (nothing where it is not measured)."""
        if footprint.weights_bytes is not None:
            self._metrics.weights_memory.labels(*self._labels).set(footprint.weights_bytes)
        peak = footprint.peak_working_bytes
        if peak is not None:
            self._metrics.working_memory.labels(*self._labels).set(peak)

    def served(self, protocol: str, seconds: float) -> None:
        """One answered request, and how long it took inside the runtime."""
        ok, latency = self._served[protocol]
        ok.inc()
        latency.observe(seconds)

    def failed(self, status: int, protocol: str = "rest") -> None:
        child = self._failed.get((status, protocol))
        if child is None:  # a labels() lookup costs more than the rest of a refusal's counting
            child = self._metrics.requests.labels(*self._labels, protocol, str(status))
            self._failed[(status, protocol)] = child
        child.inc()

    def shed(self, reason: str, level: int) -> None:
        child = self._shed.get((reason, level))
        if child is None:
            child = self._shed[(reason, level)] = self._metrics.shed.labels(
                *self._labels, str(level), reason
            )
        child.inc()

    def admitted(self, level: int) -> None:
        child = self._admitted.get(level)
        if child is None:
            child = self._admitted[level] = self._metrics.admitted.labels(*self._labels, str(level))
        child.inc()

    def objective(self, met: bool) -> None:
        self._metrics.objective.labels(*self._labels, "true" if met else "false").inc()
