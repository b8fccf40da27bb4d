"""Requests for a model scaled to zero: held at the gateway until a copy is ready.

A route marked ``cold`` has no ready endpoint on purpose (its copies were unloaded
for lack of traffic). A request for it waits here, in a bounded line (the route's
``max_waiting``), until new routes give the model an endpoint or the request's
deadline passes; it is never left hanging: at its deadline it gets 503 with
``Retry-After``, and when the line is full it gets that at once. The waiting
requests are the demand the operator reads (``GET /admin/demand``) to place a copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelfleet.api.routes import ModelRoute, RoutesDocument
from modelfleet.serving.errors import Unavailable

COLD_RETRY_AFTER_S = 5.0
"""What a held request that runs out of time is told to wait before trying again."""


def has_copy(route: ModelRoute) -> bool:
    return any(v.endpoints for v in route.versions)


@dataclass
class Demand:
    waiting: int = 0
    held: int = 0
    """Requests held since the gateway started."""
    last_held_at: float | None = None
    """Epoch seconds of the last request held."""


@dataclass
class ColdStart:
    metrics: Any
    """The gateway's metrics (``GatewayMetrics``)."""
    demand: dict[str, Demand] = field(default_factory=dict)
    _ready: dict[str, asyncio.Event] = field(default_factory=dict)

    def routes_changed(self, document: RoutesDocument) -> None:
        """Wakes the requests of each model that has a copy now."""
        for model, route in document.models.items():
            if has_copy(route) or not route.cold:
                event = self._ready.pop(model, None)
                if event is not None:
                    event.set()

    async def copy_for(
        self, model: str, route: ModelRoute, deadline: float, current: Callable[[str], ModelRoute]
    ) -> ModelRoute:
        """The route to serve ``model`` with: at once when it is not cold or has a
        copy, else once new routes give it one (``current`` reads them); 503 with
        ``Retry-After`` when the line is full or ``deadline`` (monotonic) passes."""
        if not route.cold or has_copy(route):
            return route
        demand = self.demand.setdefault(model, Demand())
        if demand.waiting >= route.max_waiting:
            self.metrics.cold_held.labels(model, "full").inc()
            raise Unavailable(
                f"model '{model}' is scaled to zero and {demand.waiting} requests already wait "
                "for its first copy",
                retry_after_s=COLD_RETRY_AFTER_S,
            )
        started = time.monotonic()
        demand.waiting += 1
        demand.held += 1
        demand.last_held_at = time.time()
        self.metrics.cold_waiting.labels(model).set(demand.waiting)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.metrics.cold_held.labels(model, "timeout").inc()
                    raise Unavailable(
                        f"model '{model}' is scaled to zero and no copy became ready within "
                        f"the request's deadline ({(time.monotonic() - started) * 1000:.0f} ms "
                        "held); one is being placed",
                        retry_after_s=COLD_RETRY_AFTER_S,
                    )
                event = self._ready.setdefault(model, asyncio.Event())
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    continue
                route = current(model)
                if not route.cold or has_copy(route):
                    self.metrics.cold_held.labels(model, "served").inc()
                    return route
        finally:
            demand.waiting -= 1
            self.metrics.cold_waiting.labels(model).set(demand.waiting)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            m: {"waiting": d.waiting, "held": d.held, "last_held_at": d.last_held_at}
            for m, d in self.demand.items()
        }
