"""The data port's front door: a request that admission refuses is answered before
aiohttp makes a handler for it (the same answer the handler gives), cheaply; every
other request, and every byte of it, reaches aiohttp. The runtime here serves ``m``
(priority 100, answers at once) and ``full`` (priority 0, one batch that sleeps 60 s
and one request queued: its queue of one is full for the whole test)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.runtime.server import door
from modelfleet.serving.front_door import Head, Pressure, parse_head
from tests.runtime.conftest import StartRuntime, tiny_model
from tests.support.rawhttp import Answer, read_answer, request
from tests.support.waiting import wait_until

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
PLAIN = json.dumps(BODY).encode()
FULL = "/v2/models/full/infer"


def connect(server: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


@pytest.fixture
def runtime(serve: Any) -> Iterator[Any]:
    """The runtime of the module's docstring, ``full``'s queue full."""
    blocked = tiny_model(
        "full", "slow", priority=0, architecture_kwargs={"delay_ms": 60_000},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 1, "timeout_ms": 120_000}, warmup={"enabled": False},
    )  # fmt: skip
    server = serve([tiny_model("m", "identity", priority=100), blocked])
    backlog = [connect(server) for _ in range(2)]
    backlog[0].sendall(request(PLAIN, FULL))  # runs for 60 s
    time.sleep(0.5)
    backlog[1].sendall(request(PLAIN, FULL))  # waits
    wait_until_sync("a request queued for 'full'", lambda: queued(server) >= 1)
    yield server
    server.kill()  # the running batch would hold up a graceful drain
    for sock in backlog:
        sock.close()


def queued(server: Any, model: str = "full") -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    found = re.search(rf'modelfleet_queue_depth\{{model="{model}",version="1"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def wait_until_sync(what: str, condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def by_door(answer: Answer) -> bool:
    """aiohttp names itself in ``Server``; the door's answers carry no such header."""
    return "server" not in answer.headers


def shed(server: Any) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
    found = re.search(r'modelfleet_shed_total\{model="full",priority="5",reason="queue_full",version="1"\} (\S+)', text)  # fmt: skip
    return float(found.group(1)) if found else 0.0


@pytest.mark.integration
def test_a_refused_request_is_answered_at_the_door_as_the_handler_would_and_counted(
    runtime: Any,
) -> None:
    with connect(runtime) as sock:
        buffer = bytearray()
        sock.sendall(request(PLAIN, FULL))
        refused = read_answer(sock, buffer)
        assert refused.status == 503 and by_door(refused), refused.headers
        assert (
            refused.json()["error"]
            == "queue of model 'full' version '1' is full (1 requests waiting)"
        )
        assert int(refused.headers["retry-after"]) >= 1
        assert float(refused.headers["x-modelfleet-expected-wait-ms"]) >= 0
        assert refused.headers["content-type"].startswith("application/json")
        # The connection stays open and serves the next request (through aiohttp).
        sock.sendall(request(PLAIN))
        served = read_answer(sock, buffer)
        assert served.status == 200 and not by_door(served)
        assert served.json()["outputs"][0]["data"] == [1, 2, 3, 4]
    assert shed(runtime) == 1
    # The same refusal through the handler (after a request that the door let in).
    with connect(runtime) as sock:
        buffer = bytearray()
        sock.sendall(request(PLAIN) + request(PLAIN, FULL))
        assert read_answer(sock, buffer).status == 200
        late = read_answer(sock, buffer)
        assert late.status == 503 and not by_door(late)
        assert late.json() == refused.json()
        assert late.headers["retry-after"] == refused.headers["retry-after"]
    assert shed(runtime) == 2


@pytest.mark.integration
def test_a_kept_alive_connection_is_the_doors_again_once_aiohttp_has_answered(
    runtime: Any,
) -> None:
    """A pooled client (``tritonclient.http``, the gateway) sends most requests on a
    connection that carried a served one: while the server refuses, their refusals are
    the door's too. Before the first refusal, a connection is aiohttp's for good."""
    with connect(runtime) as sock:
        buffer = bytearray()
        sock.sendall(request(PLAIN))  # nothing refused yet: aiohttp's for good
        assert read_answer(sock, buffer).status == 200
        sock.sendall(request(PLAIN, FULL))
        refused = read_answer(sock, buffer)
        assert refused.status == 503 and not by_door(refused)
    with connect(runtime) as sock:  # the door refuses: the server is under pressure
        sock.sendall(request(PLAIN, FULL))
        assert by_door(read_answer(sock, bytearray()))
    with connect(runtime) as sock:
        buffer = bytearray()
        for through_aiohttp in [request(PLAIN)] * 3 + [
            b"GET /v2/models/m HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n",
        ]:
            sock.sendall(through_aiohttp)
            served = read_answer(sock, buffer)
            assert served.status == 200 and not by_door(served), served.body
            sock.sendall(request(PLAIN, FULL))
            refused = read_answer(sock, buffer)
            assert refused.status == 503 and by_door(refused), refused.headers
            assert "is full" in refused.json()["error"]
    assert shed(runtime) == 7


@pytest.mark.integration
def test_a_request_its_deadline_rules_out_is_refused_at_the_door(serve: Any) -> None:
    """A queue with room, but more work ahead than a request's deadline leaves (the
    gateway's timeout header, or the model's own ``queue.timeout_ms``): the door
    refuses it, as the handler would once the body is read, without aiohttp. A request
    whose deadline the wait fits still goes in."""
    busy = tiny_model(
        "busy", "slow", architecture_kwargs={"delay_ms": 1500},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 8, "timeout_ms": 60_000},
    )  # fmt: skip
    hurried = {**busy, "name": "hurried", "queue": {"max_size": 8, "timeout_ms": 1000}}
    server = serve([busy, hurried])
    path = {name: f"/v2/models/{name}/infer" for name in ("busy", "hurried")}
    backlog = [connect(server) for _ in range(2)]
    try:
        for sock in backlog:
            sock.sendall(request(PLAIN, path["busy"]))
        # One batch running, one queued: 1.5-3 s ahead of any request on the device
        # (the two models share it).
        wait_until_sync("a request queued for 'busy'", lambda: queued(server, "busy") >= 1)
        with connect(server) as sock:
            buffer = bytearray()
            cases = [request(PLAIN, path["busy"], "X-ModelFleet-Timeout-Us: 500000\r\n"),
                     request(PLAIN, path["busy"], "X-ModelFleet-Timeout-Us: 500000\r\n"
                             "X-ModelFleet-Priority: 5\r\n"),
                     request(PLAIN, path["hurried"])]  # fmt: skip
            for raw in cases:
                sock.sendall(raw)
                refused = read_answer(sock, buffer)
                assert refused.status == 503 and by_door(refused), (refused.headers, refused.body)
                assert "cannot answer within the request's deadline" in refused.json()["error"]
                assert int(refused.headers["retry-after"]) >= 1
            # A deadline of a minute fits: the request is let in, and served.
            sock.sendall(request(PLAIN, path["busy"]))
            served = read_answer(sock, buffer)
            assert served.status == 200 and not by_door(served)
        for sock in backlog:
            assert read_answer(sock, bytearray()).status == 200
    finally:
        for sock in backlog:
            sock.close()


@pytest.mark.integration
def test_pipelined_and_trickled_requests_are_answered_in_order(runtime: Any) -> None:
    versioned = "/v2/models/full/versions/1/infer"
    with connect(runtime) as sock:
        buffer = bytearray()
        pipelined = [request(PLAIN, FULL), request(PLAIN, versioned), request(PLAIN),
                     request(PLAIN, FULL)]  # fmt: skip
        sock.sendall(b"".join(pipelined))
        answers = [read_answer(sock, buffer) for _ in range(4)]
        assert [a.status for a in answers] == [503, 503, 200, 503]
        assert [by_door(a) for a in answers] == [True, True, False, False]
    with connect(runtime) as sock:  # a byte at a time: head and body split anywhere
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in request(PLAIN, FULL):
            sock.sendall(bytes([byte]))
        answer = read_answer(sock, bytearray())
        assert answer.status == 503 and by_door(answer)
    with connect(runtime) as sock:  # the client closes: the door closes too
        sock.sendall(request(PLAIN, FULL, extra="Connection: close\r\n"))
        answer = read_answer(sock, bytearray())
        assert answer.status == 503 and answer.headers["connection"] == "close"
        assert sock.recv(100) == b""


@pytest.mark.integration
def test_what_the_door_does_not_frame_reaches_aiohttp_whole(runtime: Any) -> None:
    cases = {
        "chunked": (chunked(PLAIN), 503),
        "unknown model": (request(PLAIN, "/v2/models/nope/infer"), 404),
        "health": (b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        "bad json": (request(b"{not json"), 400),
        "query": (request(PLAIN, "/v2/models/m/infer?x=1"), 200),
    }
    for name, (raw, status) in cases.items():
        with connect(runtime) as sock:
            sock.sendall(raw)
            answer = read_answer(sock, bytearray())
            assert answer.status == status and not by_door(answer), (name, answer.body)
    with connect(runtime) as sock:  # Expect: 100-continue is aiohttp's to answer
        sock.sendall(request(PLAIN, extra="Expect: 100-continue\r\n")[: -len(PLAIN)])
        buffer = bytearray()
        assert read_answer(sock, buffer).status == 100
        sock.sendall(PLAIN)
        assert read_answer(sock, buffer).status == 200


def test_the_door_reads_only_infer_posts_it_can_frame() -> None:
    head = b"POST /v2/models/m-1.b_c/versions/7/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 12"
    assert parse_head(head + b"\r\nX-ModelFleet-Priority: 1\r\nx-modelfleet-timeout-us: 500") == Head(
        model="m-1.b_c", version="7", length=12, priority="1", timeout_us="500",
        header_length=None, keep_alive=True,
    )  # fmt: skip
    binary = parse_head(head + b"\r\nInference-Header-Content-Length: 9\r\nConnection: Close")
    assert binary is not None and binary.header_length == "9" and not binary.keep_alive
    for other in [
        head.replace(b"POST", b"GET"),
        head.replace(b"HTTP/1.1", b"HTTP/1.0"),
        head.replace(b"/infer", b"/infer?x=1"),
        head.replace(b"/infer", b"/ready"),
        head.replace(b"m-1.b_c", b"m%20x"),
        head.replace(b"Content-Length: 12", b"Content-Length: -1"),
        head.replace(b"\r\nContent-Length: 12", b""),
        head + b"\r\nContent-Length: 12",
        head + b"\r\nTransfer-Encoding: chunked",
        head + b"\r\nExpect: 100-continue",
        head + b"\r\n folded",
        head + b"\r\nHost : y",
    ]:
        assert parse_head(other) is None, other


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request_ms(server: Any, raw: bytes, count: int) -> float:
    """The runtime's CPU per refusal of ``raw``, one connection each, ``count`` in turn."""
    before = cpu_s(server.proc.pid)
    for _ in range(count):
        with connect(server) as sock:
            sock.sendall(raw)
            assert read_answer(sock, bytearray()).status == 503
    return (cpu_s(server.proc.pid) - before) * 1000 / count


def chunked(body: bytes) -> bytes:
    """``body`` in one chunk: a framing the door leaves to aiohttp."""
    head = f"POST {FULL} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


@pytest.mark.integration
def test_a_refusal_at_the_door_costs_less_cpu_than_the_same_refusal_through_aiohttp(
    runtime: Any,
) -> None:
    """What keeps shedding from eating the capacity it protects (docs/benchmarks.md):
    the runtime's CPU for a refused 64 KB request, a connection each, answered at the
    door, against the same request chunked (which the door hands to aiohttp, whose
    handler refuses it the same way)."""
    padded = json.dumps({**BODY, "padding": "x" * 65536}).encode()
    costs: dict[str, list[float]] = {"door": [], "aiohttp": []}
    for _ in range(2):  # alternating, so that a busy moment of the host hits both
        costs["door"].append(cpu_per_request_ms(runtime, request(padded, FULL), 600))
        costs["aiohttp"].append(cpu_per_request_ms(runtime, chunked(padded), 600))
    print(costs)
    assert min(costs["door"]) < 0.8 * min(costs["aiohttp"]), costs


@pytest.mark.integration
async def test_the_door_lets_in_no_more_than_the_free_places_of_a_queue(
    start_runtime: StartRuntime,
) -> None:
    """The door decides before the handler queues the request, a few loop iterations
    later: the requests it let in hold their places meanwhile, so that it refuses the
    next ones itself instead of letting the handlers refuse them at aiohttp's cost."""
    config = tiny_model(
        "m", "slow", architecture_kwargs={"delay_ms": 300},
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        queue={"max_size": 2, "timeout_ms": 30_000},
    )  # fmt: skip
    client, runtime = await start_runtime([config])
    model = runtime.repository.models[("m", "1")]
    running = [
        asyncio.ensure_future(client.post("/v2/models/m/infer", json=BODY)) for _ in range(2)
    ]
    await wait_until("one request running, one queued", lambda: len(model.queue) == 1, 5.0)
    head = parse_head(request(PLAIN).split(b"\r\n\r\n")[0])
    assert head is not None
    at_the_door = door(runtime)
    assert at_the_door.lets_in(head), "the last free place: let in before its body is read"
    assert not at_the_door.lets_in(head), "the place is taken: the body decides"
    refused = at_the_door.refusal(head, PLAIN)
    assert refused is not None and refused.status == 503
    assert "is full" in refused.message
    urgent = json.dumps({**BODY, "parameters": {"priority": 1}}).encode()
    assert at_the_door.refusal(head, urgent) is None, "a higher level may displace"
    # Its handler starts: the request takes its place in the queue.
    last = asyncio.ensure_future(client.post("/v2/models/m/infer", json=BODY))
    await wait_until("the request let in queued", lambda: len(model.queue) == 2, 5.0)
    assert model.inbound.count() == 1, "the urgent request let in, its handler not started"
    answers = await asyncio.gather(*running, last)
    assert [a.status for a in answers] == [200, 200, 200]


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += chunk

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class Inner(asyncio.Protocol):
    """aiohttp's handler, as the door sees it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class FullQueue:
    """A door for which every queue is full and every body but ``b"urgent"`` refused."""

    def lets_in(self, head: Head) -> bool:
        return False

    def refusal(self, head: Head, body: bytes) -> Any:
        from modelfleet.serving.errors import Unavailable

        return None if body == b"urgent" else Unavailable("full", retry_after_s=2)


async def test_the_door_closes_a_connection_left_idle() -> None:
    from modelfleet.serving.front_door import FrontDoor

    idle = FakeTransport()
    FrontDoor(Inner, FullQueue(), 1 << 20, idle_s=0.05).connection_made(idle)  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert idle.closed and not idle.written, "a connection that never sent a request"

    transport = FakeTransport()
    door_ = FrontDoor(Inner, FullQueue(), 1 << 20, idle_s=0.05)
    door_.connection_made(transport)  # type: ignore[arg-type]
    door_.data_received(request(b"x", FULL)[:30])
    await asyncio.sleep(0.15)
    assert not transport.closed, "a request under way is not idle"
    door_.data_received(request(b"x", FULL)[30:])
    assert transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 2\r\n" in transport.written and transport.written.endswith(
        b'{"error": "full"}'
    )
    await asyncio.sleep(0.15)
    assert transport.closed, "idle again after its refusal"


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def door_and_inner() -> tuple[Any, FakeTransport, list[Inner]]:
    from modelfleet.serving.front_door import FrontDoor

    inners: list[Inner] = []

    def inner() -> Inner:
        inners.append(Inner())
        return inners[-1]

    pressure = Pressure(window_s=60)
    pressure.refused()  # the server refuses: the door stays in front
    transport = FakeTransport()
    door_ = FrontDoor(inner, FullQueue(), 1 << 20, idle_s=60, pressure=pressure)
    door_.connection_made(transport)  # type: ignore[arg-type]
    return door_, transport, inners


async def test_a_connection_let_in_while_nothing_is_refused_is_aiohttps_for_good() -> None:
    """Staying in between costs every request: the door does it only under pressure,
    and leaves once nothing has been refused for ``window_s``."""
    from modelfleet.serving.front_door import FrontDoor

    inners: list[Inner] = []

    def inner() -> Inner:
        inners.append(Inner())
        return inners[-1]

    for pressure in (None, Pressure()):
        transport = FakeTransport()
        door_ = FrontDoor(inner, FullQueue(), 1 << 20, pressure=pressure)
        door_.connection_made(transport)  # type: ignore[arg-type]
        let_in = request(b"urgent", FULL) + request(b"next", FULL)
        door_.data_received(let_in[:-3])
        assert transport.protocol is inners[-1] and inners[-1].transport is transport
        assert bytes(inners[-1].received) == let_in[:-3], "every byte read so far, once"

    pressure = Pressure(window_s=0.1)
    pressure.refused()
    transport = FakeTransport()
    door_ = FrontDoor(inner, FullQueue(), 1 << 20, pressure=pressure)
    door_.connection_made(transport)  # type: ignore[arg-type]
    door_.data_received(request(b"next", FULL))  # refused at the door: pressure stays on
    assert transport.written.startswith(b"HTTP/1.1 503")
    door_.data_received(request(b"urgent", FULL))
    assert transport.protocol is None, "let in under pressure: the door stays"
    await asyncio.sleep(0.15)  # nothing refused since
    inners[-1].transport.write(OK)
    await asyncio.sleep(0)  # the hand-over waits for aiohttp's write to end
    assert transport.protocol is inners[-1], "answered, no pressure: aiohttp's for good"
    assert transport.written.endswith(OK)


async def test_a_kept_alive_connection_comes_back_to_the_door_once_aiohttp_has_answered() -> None:
    """Clients that pool connections send most requests on a connection that carried an
    earlier one: the door refuses those too, once aiohttp has answered what it was given.
    aiohttp gets each request's bytes exactly, and every request that follows one it
    has not answered (pipelined), in order."""
    door_, transport, inners = door_and_inner()
    urgent, refused = request(b"urgent", FULL), request(b"next", FULL)
    door_.data_received(urgent)
    assert len(inners) == 1 and transport.protocol is None, "the door stays in front"
    aiohttp = inners[0]
    assert bytes(aiohttp.received) == urgent, "exactly the request let in"
    door_.data_received(refused[:-3])
    door_.data_received(refused[-3:])
    assert bytes(aiohttp.received) == urgent + refused, "pipelined behind an unanswered one"
    assert not transport.written
    aiohttp.transport.write(OK[:20])  # its answers, in pieces, through the connection
    aiohttp.transport.writelines([OK[20:], OK[:5]])
    assert transport.written == OK + OK[:5]
    door_.data_received(refused)  # aiohttp still owes one answer: its request
    assert bytes(aiohttp.received) == urgent + refused * 2
    aiohttp.transport.write(OK[5:] + OK)
    transport.written.clear()
    door_.data_received(refused)  # all answered: the door's again
    assert transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert bytes(aiohttp.received) == urgent + refused * 2
    # A request split anywhere: the door reads its body before it decides.
    door_.data_received(urgent[:10])
    door_.data_received(urgent[10:-2])
    assert bytes(aiohttp.received) == urgent + refused * 2
    door_.data_received(urgent[-2:])
    assert bytes(aiohttp.received).endswith(urgent) and len(inners) == 1
    aiohttp.transport.write(OK)
    transport.written.clear()
    door_.data_received(refused)
    assert transport.written.startswith(b"HTTP/1.1 503"), "answered: the door's again"
    # An answer the door cannot count (chunked): the connection is aiohttp's for good.
    door_.data_received(urgent)
    aiohttp.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    aiohttp.transport.write(b"2\r\nok\r\n0\r\n\r\n")
    transport.written.clear()
    before = len(aiohttp.received)
    door_.data_received(refused)
    assert bytes(aiohttp.received[before:]) == refused and not transport.written
    door_.connection_lost(None)
    assert aiohttp.lost, "the end of the connection reaches aiohttp"


async def test_what_the_door_cannot_frame_makes_the_connection_aiohttps_with_every_byte() -> None:
    door_, transport, inners = door_and_inner()
    rest = chunked(b"x")
    door_.data_received(rest[:-3])  # a first request the door cannot frame
    assert transport.protocol is inners[-1] and inners[-1].transport is transport
    assert bytes(inners[-1].received) == rest[:-3], "every byte read so far, once"

    door_, transport, inners = door_and_inner()
    head = b"HEAD /v2/models/m HTTP/1.1\r\nHost: t\r\n\r\n"
    door_.data_received(request(b"urgent", FULL) + head + request(b"next", FULL))
    assert transport.protocol is inners[0] and len(inners) == 1, "HEAD: aiohttp's for good"
    assert bytes(inners[0].received) == request(b"urgent", FULL) + head + request(b"next", FULL)
    inners[0].transport.write(OK)
    door_.data_received(request(b"next", FULL))
    assert bytes(inners[0].received).endswith(head + request(b"next", FULL) * 2)
    assert transport.written == OK, "HEAD: an answer with a length and no body"

    # aiohttp answers before the whole body arrived (a 413, say): aiohttp's for good.
    door_, transport, inners = door_and_inner()
    other = request(b"0123456789", "/v2/repository/index")  # let in on its head
    door_.data_received(other[:-2])
    assert bytes(inners[0].received) == other[:-2]
    inners[0].transport.write(OK)
    door_.data_received(other[-2:] + request(b"next", FULL))
    assert bytes(inners[0].received) == other + request(b"next", FULL)
    assert transport.written == OK


def test_the_door_frames_requests_and_answers_it_can_count() -> None:
    from modelfleet.serving.front_door import answer_length, body_length

    cases: list[tuple[Any, bytes, int | None]] = [
        (body_length, b"GET /v2/health/ready HTTP/1.1\r\nHost: t", 0),
        (body_length, b"POST /x HTTP/1.1\r\nHost: t\r\ncontent-length: 12", 12),
        (body_length, b"GET / HTTP/1.0\r\nHost: t", None),
        (body_length, b"HEAD / HTTP/1.1\r\nHost: t", None),
        (body_length, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", None),
        (body_length, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", None),
        (body_length, b"POST / HTTP/1.1\r\nContent-Length: x", None),
        (body_length, b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1", None),
        (body_length, b"GET / HTTP/1.1\r\nUpgrade: websocket", None),
        (answer_length, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 17", 17),
        (answer_length, b"HTTP/1.1 204 No Content\r\nServer: x", 0),
        (answer_length, b"HTTP/1.1 100 Continue", None),
        (answer_length, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", None),
        (answer_length, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close", None),
        (answer_length, b"HTTP/1.1 200 OK\r\nServer: x", None),
        (answer_length, b"HTTP/1.0 200 OK\r\nContent-Length: 2", None),
    ]
    for frame, head, length in cases:
        assert frame(head) == length, head
