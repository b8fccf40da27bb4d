"""One infer request from admission to answer, whichever protocol carried it.

REST (``server.py``) and gRPC (``grpc_server.py``) differ only in how a request's
bytes are read, parsed and answered; a :class:`Wire` says that. Everything else is
here, once: admission before the body is parsed, the model's queue and batcher,
and the metrics, so the two protocols cannot drift apart in what they refuse or
count.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from modelfleet.api import headers
from modelfleet.runtime.hosted import HostedModel
from modelfleet.runtime.protocol import Array, InferRequest
from modelfleet.serving.errors import ServingError, Unavailable

Body = TypeVar("Body")
Answer = TypeVar("Answer")
BodyT = TypeVar("BodyT", contravariant=True)
AnswerT = TypeVar("AnswerT", covariant=True)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What is known of a request before its body is read: the gateway's priority
    and timeout headers (or gRPC metadata), and the client's gRPC deadline."""

    level: int | None = None
    timeout_us: int | None = None


class Wire(Protocol[BodyT, AnswerT]):
    """How one protocol reads, parses and answers an infer request."""

    protocol: str
    """The ``protocol`` label of the request metrics: ``rest`` or ``grpc``."""

    def peek(self, body: BodyT) -> tuple[int | None, int | None]:
        """The request's own priority and timeout (µs) parameters, read cheaply."""
        ...

    def decode(self, body: BodyT, model: HostedModel) -> InferRequest:
        """The validated request (``BadRequest`` naming the input otherwise)."""
        ...

    def encode(self, model: HostedModel, request: InferRequest, outputs: list[Array]) -> AnswerT:
        """The answer to send (``BadRequest`` for an unknown requested output)."""
        ...


@dataclass(slots=True)
class Infer(Generic[Body, Answer]):
    """Serves one request for ``model``: ``run`` reads the body with ``read`` only
    once admission has let it in, so a refusal costs nothing but the refusal."""

    model: HostedModel
    arrival: Arrival
    wire: Wire[Body, Answer]
    started: float = field(default_factory=time.perf_counter)

    def admit_early(self, *, door: bool = False) -> None:
        """Refuses, before the body is read, what the arrival already rules out."""
        model, arrival = self.model, self.arrival
        budget = model.budget_s(arrival.timeout_us)
        known = arrival.level is not None
        refused = model.refusal(arrival.level, budget, wait=known, door=door)
        if refused is not None:
            raise self._counted(refused)

    def refusal(self, body: Body) -> ServingError | None:
        """The refusal (counted) that ``run`` would answer before decoding ``body``, or
        None: the runtime's front door asks before a handler exists. A request let in
        counts as ``inbound`` to its model until its handler claims it."""
        if self.arrival.level is not None:  # the headers decide it all, as in admit_early
            try:
                self.admit_early(door=True)
            except ServingError as exc:
                return exc
        else:
            try:
                self._admission(body, door=True)  # the check the body's parameters complete
            except ServingError as exc:
                return self._counted(exc)
        self.model.inbound.add()
        return None

    def _admission(self, body: Body, *, door: bool = False) -> tuple[int | None, float]:
        """The request's level (None: the model's default) and budget once its body is
        read; raises (uncounted) what admission refuses at that level."""
        model, arrival = self.model, self.arrival
        if arrival.level is not None:
            return arrival.level, model.budget_s(arrival.timeout_us)
        level, timeout_param = self.wire.peek(body)
        budget = model.budget_s(arrival.timeout_us, timeout_param)
        refused = model.refusal(level or 0, budget, door=door)
        if refused is not None:
            raise refused
        return level, budget

    async def run(self, read: Callable[[], Awaitable[Body]]) -> Answer:
        model, arrival = self.model, self.arrival
        try:
            model.worker.arriving(model, +1)  # tells eager batching more work is on its way
            try:
                body = await read()
                level, budget = self._admission(body)
                decoded = self.wire.decode(body, model)
            finally:
                model.worker.arriving(model, -1)
            outputs, cached = await model.infer(
                decoded,
                timeout_us=arrival.timeout_us,
                decided=(level or model.default_level, budget),
            )
            answer = self.wire.encode(model, decoded, outputs)
        except ServingError as exc:
            raise self._counted(exc) from None
        finished = time.perf_counter()
        self._record(self.started, finished, cached)
        return answer

    def _counted(self, error: ServingError) -> ServingError:
        model = self.model
        model.metrics.failed(error.status, self.wire.protocol)
        model.errors += 1
        if isinstance(error, Unavailable):
            error.headers[headers.EXPECTED_WAIT_MS] = expected_wait_ms(model)
        return error

    def _record(self, started: float, finished: float, cached: bool) -> None:
        model = self.model
        metrics = model.metrics
        metrics.served(self.wire.protocol, finished - started)
        objective = model.config.latency_objective_ms
        if objective is not None:
            met = (finished - started) * 1000 <= objective
            metrics.objective(met)
            if met:
                model.objective_met += 1
            else:
                model.objective_missed += 1
        model.recent.record(finished, finished - started)
        if cached:
            metrics.cache_hits.inc()
        model.served += 1


def expected_wait_ms(model: HostedModel) -> str:
    """The queue wait a default-priority request for the model can expect now."""
    return f"{model.worker.expected_wait(model, model.default_level) * 1000:.1f}"
