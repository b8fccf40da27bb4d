"""The gateway's front door (``modelfleet.serving.front_door``): an infer request that
the gateway's admission refuses at once is answered before aiohttp makes a request, a
task and a handler of it, with the handler's answer, and counted as the handler counts
it (shed by reason, and a request answered "shed").

What it refuses is what ``Gateway.admit`` would refuse without waiting: the hold-back
(no endpoint expects to start the request within its deadline, or only past the
headroom kept for higher-priority models) and a full concurrency gate with no waiter of
a lower level to displace. A request that would wait for a slot, go to a cold model's
first copy, or be answered anything but a refusal goes to aiohttp, which decides again.
A request without a forced version or session key may go to any version with weight:
the door refuses it only when every one of them would.

Under a 10x surge through the gateway nearly every connection ends in a refusal: at
0.48-0.51 ms of the gateway's CPU each through aiohttp (8-image JSON requests,
docs/benchmarks.md) the refusals alone outgrow a CPU, and the high class's requests
wait behind them in the gateway's event loop; at the door one costs 0.33 ms.
"""

from __future__ import annotations

import time

from modelfleet.api.request_parameters import peek_parameters
from modelfleet.gateway.proxy import DEFAULT_LEVEL, Gateway
from modelfleet.gateway.routes import ModelRoute, VersionRoute
from modelfleet.serving.errors import ServingError, Unavailable
from modelfleet.serving.front_door import Door, Head

_VERSION = b"x-modelfleet-version"
_SESSION = b"x-modelfleet-session"


class GatewayDoor:
    """The gateway's admission as its front door asks it (``Door``)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def lets_in(self, head: Head) -> bool:
        return self._refusal(head, _header_level(head) or DEFAULT_LEVEL) is None

    def refusal(self, head: Head, body: bytes) -> ServingError | None:
        level = _header_level(head)
        if level is None:  # where the handler looks too: Triton's body parameter
            level, _ = peek_parameters(body, head.header_length)
        level = level or DEFAULT_LEVEL
        refused = self._refusal(head, level)
        if refused is not None:
            gateway, model = self.gateway, head.model
            route = gateway.table.document.models[model]
            versions = self._versions(head, route) or []
            label = versions[0] if len(versions) == 1 else gateway.choose(model, route, None, None)
            gateway.count_shed(model, label.version, level, refused.reason)
            seconds = time.perf_counter() - head.at
            gateway.metrics.answered(model, label.version, "", "shed", seconds, "rest")
        return refused

    def _refusal(self, head: Head, level: int) -> Unavailable | None:
        """What ``Gateway.admit`` would refuse at once (uncounted), or None."""
        gateway = self.gateway
        route = gateway.table.document.models.get(head.model)
        if route is None or gateway.draining:
            return None  # the handler's 404 or 503
        versions = self._versions(head, route)
        if versions is None:
            return None
        if level >= DEFAULT_LEVEL:  # the hold-back judges the default level's wait
            now = time.monotonic()
            deadline = now + route.timeout_ms / 1000
            if head.timeout_us is not None and head.timeout_us.isdigit():
                deadline = min(deadline, now + int(head.timeout_us) / 1e6)
            held = [gateway.held_back(head.model, route, v, deadline) for v in versions]
            if all(held):
                return held[0]
        return gateway.table.admission[head.model].refusal(level)

    def _versions(self, head: Head, route: ModelRoute) -> list[VersionRoute] | None:
        """The versions the request may go to; None: the handler decides (a version
        unknown, none with weight or endpoints: its error, or a cold start)."""
        raw_version, raw_session = head.fields.get(_VERSION), head.fields.get(_SESSION)
        if not all(raw is None or raw.isascii() for raw in (raw_version, raw_session)):
            return None  # as aiohttp would decode them: the handler's to read
        forced = head.version or _text(raw_version)
        session = _text(raw_session)
        if forced is not None or session is not None:
            try:  # no draw of the split: a forced version or a session's point
                versions = [self.gateway.choose(head.model, route, forced, session)]
            except ServingError:
                return None
        else:
            versions = [v for v in route.versions if v.weight > 0]
        return versions if versions and all(v.endpoints for v in versions) else None


def _header_level(head: Head) -> int | None:
    """``X-ModelFleet-Priority`` as the handler reads it (None: not given as a number)."""
    return int(head.priority) if head.priority.isdigit() else None


def _text(value: bytes | None) -> str | None:
    """An ASCII header value as the handler reads it (None: absent)."""
    return None if value is None else value.decode("ascii")


def door(gateway: Gateway) -> Door:
    """The front door of ``gateway``'s data port."""
    return GatewayDoor(gateway)
