"""The gateway's front door: what the gateway's admission refuses at once (the hold-back,
a full concurrency gate) is answered before aiohttp makes a request of it, with the
handler's answer, and counted as the handler counts it; what it would let in, let
wait, or answer otherwise reaches aiohttp whole."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from typing import Any

import pytest

from modelfleet.gateway.admission import Admission
from modelfleet.gateway.door import GatewayDoor
from modelfleet.gateway.proxy import DEFAULT_LEVEL, Gateway
from modelfleet.gateway.routes import parse_routes
from modelfleet.serving.errors import Unavailable
from modelfleet.serving.front_door import Head, parse_head
from tests.gateway.test_gateway import SLOW, SLOW_BODY, route
from tests.support.rawhttp import Answer, read_answer, request
from tests.support.waiting import wait_for

A, B = "http://a:1", "http://b:1"
PLAIN = b'{"inputs":[]}'
URGENT = b'{"inputs":[],"parameters":{"priority":1}}'


def head(path: str = "/v2/models/m/infer", *fields: str) -> Head:
    raw = "\r\n".join([f"POST {path} HTTP/1.1", "Content-Length: 13", *fields]).encode()
    parsed = parse_head(raw)
    assert parsed is not None
    return parsed


def two_versions(**extra: Any) -> Gateway:
    """``m``: versions 1 (on A) and 2 (on B), half the traffic each."""
    versions = [
        {"version": "1", "weight": 50, "endpoints": [A]},
        {"version": "2", "weight": 50, "endpoints": [B]},
    ]
    return Gateway(parse_routes({"models": {"m": {"versions": versions, **extra}}}), seed=3)


def swamp(gateway: Gateway, url: str) -> None:
    """``url`` reports 100 s of queue wait for ``m``: past any deadline (30 s)."""
    gateway.table.endpoints[url].report("m", 100.0, time.monotonic())


def test_the_door_refuses_what_every_version_a_request_may_go_to_would_hold_back() -> None:
    gateway = two_versions()
    door = GatewayDoor(gateway)
    swamp(gateway, A)
    assert door.lets_in(head())  # version 2 may take it: the handler chooses
    assert door.lets_in(head("/v2/models/m/versions/2/infer"))
    assert door.lets_in(head("/v2/models/m/versions/9/infer"))  # the handler's 404
    assert door.lets_in(head("/v2/models/other/infer"))
    for forced in (head("/v2/models/m/versions/1/infer"), head(
        "/v2/models/m/infer", "X-ModelFleet-Version: 1"
    )):  # fmt: skip
        assert not door.lets_in(forced)
        refused = door.refusal(forced, PLAIN)
        assert isinstance(refused, Unavailable) and refused.reason == "deadline"
        assert "version '1'" in refused.message and refused.headers["Retry-After"] == "100"
        assert door.refusal(forced, URGENT) is None  # above the default level: no hold-back
    assert door.lets_in(head("/v2/models/m/versions/1/infer", "X-ModelFleet-Priority: 1"))
    assert gateway.shed_counts == {("m", "1"): 2}
    swamp(gateway, B)
    assert not door.lets_in(head())
    assert door.refusal(head(), PLAIN) is not None
    assert sum(gateway.shed_counts.values()) == 3  # counted against the version drawn
    gateway.draining = True
    assert door.lets_in(head())  # the handler's own 503


def test_a_session_key_is_judged_by_the_version_it_sticks_to() -> None:
    gateway = two_versions()
    door = GatewayDoor(gateway)
    swamp(gateway, A)
    keys = [f"user-{i}" for i in range(40)]
    sticks_to = {k: gateway.choose("m", gateway.route("m"), None, k).version for k in keys}
    assert set(sticks_to.values()) == {"1", "2"}
    for key, version in sticks_to.items():
        assert door.lets_in(head("/v2/models/m/infer", f"X-ModelFleet-Session: {key}")) == (
            version == "2"
        ), key


def test_the_door_refuses_a_full_gate_as_acquire_would_at_once() -> None:
    gateway = two_versions(max_concurrency=1, max_waiting=0)
    door = GatewayDoor(gateway)
    gate = gateway.table.admission["m"]
    assert door.lets_in(head())
    gate.in_flight = 1
    assert not door.lets_in(head())
    refused = door.refusal(head(), PLAIN)
    assert isinstance(refused, Unavailable) and refused.reason == "queue_full"
    assert refused.message == gate.refusal(DEFAULT_LEVEL).message  # type: ignore[union-attr]
    assert door.refusal(head(), URGENT) is None  # Triton's priority 1 may pass the limit
    assert door.lets_in(head("/v2/models/m/infer", "X-ModelFleet-Priority: 1"))
    gate.in_flight = 2  # twice the limit: urgent requests wait or are refused too
    assert not door.lets_in(head("/v2/models/m/infer", "X-ModelFleet-Priority: 1"))


@pytest.mark.parametrize(
    ("limit", "max_waiting", "in_flight", "waiters", "level"),
    [
        (1, 0, 0, [], 5),
        (1, 0, 1, [], 5),
        (1, 0, 1, [], 1),
        (1, 0, 2, [], 1),
        (1, 2, 1, [5], 5),
        (1, 2, 1, [5, 5], 5),
        (1, 2, 1, [5, 5], 3),
        (1, 2, 1, [3, 3], 3),
        (1, 2, 1, [3, 7], 5),
        (2, 1, 2, [1], 6),
    ],
)
async def test_a_gates_refusal_is_what_acquire_raises_at_once(
    limit: int, max_waiting: int, in_flight: int, waiters: list[int], level: int
) -> None:
    gate = Admission("m", limit, max_waiting, urgent_below=DEFAULT_LEVEL)
    gate.in_flight = in_flight
    waiting = [asyncio.ensure_future(gate.acquire(lv, 10)) for lv in waiters]
    await asyncio.sleep(0)
    predicted = gate.refusal(level)
    attempt = asyncio.ensure_future(gate.acquire(level, 10))
    await asyncio.sleep(0)
    refused_at_once = attempt.done() and isinstance(attempt.exception(), Unavailable)
    assert (predicted is not None) == refused_at_once
    for task in [*waiting, attempt]:
        task.cancel()
    await asyncio.gather(*waiting, attempt, return_exceptions=True)


# -- a real gateway process in front of a real runtime ---------------------------------

HOLD_MS = 1500


def in_flight(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelfleet_gateway_in_flight{") and 'model="slow"' in line
    )


def gateway_counts(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {"shed": 0.0, "answered_shed": 0.0}
    for line in text.splitlines():
        value = float(line.rsplit(" ", 1)[1]) if line and line[0] != "#" else 0.0
        if line.startswith("modelfleet_gateway_shed_total{") and 'reason="queue_full"' in line:
            counts["shed"] += value
        if line.startswith("modelfleet_gateway_requests_total{") and 'outcome="shed"' in line:
            counts["answered_shed"] += value
    return counts


@pytest.mark.integration
async def test_a_full_gate_is_answered_at_the_gateways_door_and_counted(procs: Any) -> None:
    """``slow`` takes 1.5 s a request; the gateway lets 2 in flight and none wait. With
    both places taken, plain requests are refused by the door (aiohttp names itself in
    ``Server``; the door does not), as the handler would answer and count them, two on
    one kept-alive connection; a request of Triton's priority 1 (header or body) passes
    the limit, reaches aiohttp whole and is served."""
    slow = {**SLOW, "name": "slow", "architecture_kwargs": {"delay_ms": HOLD_MS},
            "queue": {"max_size": 8, "timeout_ms": 30000}}  # fmt: skip
    runtime = procs.runtime([slow])
    gw = procs.gateway({"slow": route(("1", 100, [runtime.url]), max_concurrency=2, max_waiting=0)})
    path = "/v2/models/slow/infer"
    host, port = "127.0.0.1", int(gw.url.rsplit(":", 1)[1])
    holders = [asyncio.to_thread(_call, gw.url + path, SLOW_BODY) for _ in range(2)]
    held = asyncio.gather(*holders)
    await asyncio.to_thread(wait_for, "both places taken", lambda: in_flight(gw.url) == 2, 10, 0.02)
    before = gateway_counts(gw.url)
    expected = Admission("slow", 2, 0)._shed_error()
    with socket.create_connection((host, port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(request(SLOW_BODY, path) * 2)  # pipelined: both refused here
        for _ in range(2):
            answer = read_answer(sock, buffer)
            assert answer.status == 503, answer.body
            assert "server" not in answer.headers, "refused by aiohttp's handler, not the door"
            assert answer.json() == {"error": expected.message}
            assert answer.headers["retry-after"] == "1"
    after = gateway_counts(gw.url)
    assert after["shed"] - before["shed"] == 2 and after["answered_shed"] - before[
        "answered_shed"
    ] == 2, (before, after)  # fmt: skip
    urgent_body = re.sub(rb"\}\]\}$", rb'}],"parameters":{"priority":1}}', SLOW_BODY)
    assert urgent_body != SLOW_BODY
    answers = await asyncio.gather(
        asyncio.to_thread(_raw_call, host, port, request(urgent_body, path)),
        asyncio.to_thread(
            _raw_call, host, port, request(SLOW_BODY, path, "X-ModelFleet-Priority: 1\r\n")
        ),
    )
    for answer in answers:
        assert answer.status == 200 and "server" in answer.headers, vars(answer)
    assert [s for s, _ in await held] == [200, 200]


def _call(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _raw_call(host: str, port: int, raw: bytes) -> Answer:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(raw)
        return read_answer(sock, bytearray())
