"""Prometheus metrics of the gateway: the split actually applied can be read here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_gateway_requests_total",
            "Requests by model, version, endpoint and outcome (the runtime's status, "
            "or shed, timeout, unreachable).",
            ("model", "version", "endpoint", "outcome"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_gateway_latency_seconds",
            "Time from arrival to the answer, per model and version.",
            ("model", "version"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.shed = Counter(
            "modelfleet_gateway_shed_total",
            "Requests refused by the gateway's admission, by model and priority level.",
            ("model", "level"),
            registry=self.registry,
        )
        self.retries = Counter(
            "modelfleet_gateway_retries_total",
            "Requests sent again to another endpoint after a failure.",
            ("model",),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelfleet_gateway_in_flight",
            "Requests in flight to the runtimes, per model.",
            ("model",),
            registry=self.registry,
        )
