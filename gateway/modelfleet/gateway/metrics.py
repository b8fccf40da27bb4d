"""Prometheus metrics of the gateway: the split actually applied can be read here.

``modelfleet_gateway_requests_total`` counts each client request once, under the
version and endpoint that answered it, its protocol (``rest`` or ``grpc``) and its
outcome: the status returned, or ``shed`` (refused by admission), ``timeout`` (the
gateway's deadline passed) or ``unreachable`` (no endpoint could be reached). A gRPC
answer counts under the HTTP status its code maps from (OK is ``200``, UNAVAILABLE
``503``: ``serving.grpc_status.HTTP_STATUS``), and under the endpoint's HTTP URL, the
key REST uses for the same pod. Retries are counted apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_Labels = tuple[str, str, str, str, str]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_gateway_requests_total",
            "Client requests by model, version, endpoint, outcome (the status returned, "
            "or shed, timeout, unreachable) and protocol (rest, grpc).",
            ("model", "version", "endpoint", "outcome", "protocol"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelfleet_gateway_latency_seconds",
            "Time from arrival to the answer, by model, version, endpoint, outcome and protocol.",
            ("model", "version", "endpoint", "outcome", "protocol"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.shed = Counter(
            "modelfleet_gateway_shed_total",
            "Requests refused by the gateway's admission, by model, priority level and "
            "reason: queue_full (no slot and no room to wait), timeout (waited too long for "
            "a slot), deadline (no runtime could start it before its deadline), holdback "
            "(kept off runtimes whose backlog for it exceeds the headroom kept for "
            "higher-priority models).",
            ("model", "level", "reason"),
            registry=self.registry,
        )
        self.retries = Counter(
            "modelfleet_gateway_retries_total",
            "Requests sent again to another endpoint, by model, the endpoint that failed "
            "and why (unreachable, busy).",
            ("model", "endpoint", "reason"),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelfleet_gateway_in_flight",
            "Requests admitted and not yet answered, per model.",
            ("model",),
            registry=self.registry,
        )
        self.shadow = Counter(
            "modelfleet_gateway_shadow_total",
            "Requests mirrored to a model's shadow version, by outcome: compared (both "
            "answers compared), failed (the shadow did not answer), skipped (too many "
            "mirrors under way).",
            ("model", "version", "outcome"),
            registry=self.registry,
        )
        self.shadow_agreement = Counter(
            "modelfleet_gateway_shadow_agreement_total",
            "Compared shadow answers by whether every row's arg-max (and every BYTES "
            "output) agreed with the primary's.",
            ("model", "version", "agree"),
            registry=self.registry,
        )
        self.shadow_diff = Histogram(
            "modelfleet_gateway_shadow_max_abs_diff",
            "Largest absolute difference between a shadow answer's outputs and the primary's.",
            ("model", "version"),
            buckets=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0),
            registry=self.registry,
        )
        self.cold_held = Counter(
            "modelfleet_gateway_cold_held_total",
            "Requests for a model scaled to zero held for its first copy, by outcome: "
            "served, timeout (its deadline passed first), full (the line was full).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.cold_waiting = Gauge(
            "modelfleet_gateway_cold_waiting",
            "Requests waiting now for the first copy of a model scaled to zero.",
            ("model",),
            registry=self.registry,
        )
        self._children: dict[_Labels, tuple[Counter, Histogram]] = {}
        self._in_flight: dict[str, Gauge] = {}

    def in_flight_of(self, model: str) -> Gauge:
        gauge = self._in_flight.get(model)
        if gauge is None:
            gauge = self._in_flight[model] = self.in_flight.labels(model)
        return gauge

    def answered(
        self,
        model: str,
        version: str,
        endpoint: str,
        outcome: str,
        seconds: float,
        protocol: str = "rest",
    ) -> None:
        """Counts one client request and its latency (label children cached: hot path)."""
        key = (model, version, endpoint, outcome, protocol)
        children = self._children.get(key)
        if children is None:
            children = self.requests.labels(*key), self.latency.labels(*key)
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
