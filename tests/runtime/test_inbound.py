"""The count of requests the front door let in whose handler has not started."""

from __future__ import annotations

from modelfleet.runtime.inbound import EXPIRY_S, Inbound


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_request_let_in_counts_until_its_handler_claims_it() -> None:
    inbound = Inbound(Clock())
    inbound.add()
    inbound.add()
    assert inbound.count() == 2
    inbound.claim()
    assert inbound.count() == 1
    inbound.claim()
    inbound.claim()  # a handler of a request the door did not see: nothing to claim
    assert inbound.count() == 0


def test_a_request_whose_handler_never_starts_stops_counting_after_the_expiry() -> None:
    clock = Clock()
    inbound = Inbound(clock)
    inbound.add()
    clock.now += EXPIRY_S / 2
    inbound.add()
    assert inbound.count() == 2
    clock.now += EXPIRY_S / 2 + 0.01
    assert inbound.count() == 1, "the first one's client left before its handler started"
    clock.now += EXPIRY_S
    assert inbound.count() == 0
