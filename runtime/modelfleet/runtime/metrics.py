"""Prometheus metrics of one runtime process (its own registry, so tests can
run several servers in one process)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "modelfleet_requests_total",
            "Infer requests by model, version and outcome (ok, or the HTTP status).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_request_latency_seconds",
            "End-to-end latency of successful infer requests inside the runtime.",
            labels,
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
        self.model_ready = Gauge(
            "modelfleet_model_ready",
            "1 when the model version is loaded, warm and serving.",
            labels,
            registry=self.registry,
        )

    def forget(self, model: str, version: str) -> None:
        """Drops the per-model series of an unloaded model."""
        for metric in (
            self.latency, self.queue_time, self.compute_time, self.batch_size,
            self.queue_depth, self.cache_hits, self.model_ready,
        ):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(model, version)
