"""A data port's front door: refuses an infer request that admission rules out
before aiohttp spends a request object, a task and a handler on it. The runtime and
the gateway each put one in front of their data port, with their own admission
(``Door``): the runtime's queues (``modelfleet.runtime.server.RuntimeDoor``), the
gateway's hold-back and concurrency gate (``modelfleet.gateway.door.GatewayDoor``).

Under a low-priority surge most connections end in a refusal, and each refusal takes
CPU from the work the admitted requests wait for: in the runtime, if an admitted
request costs ``c`` of its CPU and a refusal ``r``, twice the saturation rate serves
``(c - 2r) / (c - r)`` of it, so keeping 90% needs ``r <= c / 11``; in the gateway,
the refusals of a 10x surge must fit in its CPU beside the requests it forwards.
Going through aiohttp, a refused connection cost about 0.4-0.7 ms of CPU before any
of the server's own code ran; read here (the head parsed with a few byte searches,
the body only buffered) it costs what the kernel and the event loop charge for it.

Each connection starts here. The door reads the head of ``POST .../infer`` with a
``Content-Length``. While the model has room for it (``Door.lets_in``), it goes to
aiohttp at once; otherwise the door reads its body and asks ``door`` (the same
admission as the handler's) whether to refuse it. A refusal is answered here (the
same JSON error, status and headers as the handler's) and the door reads the
connection's next request. Anything else (a request admitted, another method or
path) goes to aiohttp's handler, one per connection, made when the first request
needs it, with exactly that request's bytes.

While the server refuses (``Pressure``: the door refused a request in the last
second), the door stays in front of a kept-alive connection it lets a request in on:
clients that pool connections (``tritonclient.http``, the gateway's own upstream
client) send most of their requests on connections that carried an earlier one, and
through aiohttp a refusal costs half as much again. While aiohttp has a request of
the connection it has not answered, every later request goes to it too, in order
(pipelining); the door counts the answers aiohttp writes (their ``Content-Length``)
and reads the connection's next request itself once aiohttp has answered them all.
Staying costs 15-20 us on each request let in (a Python call for each read and
write, the framing of each request and answer): when nothing has been refused for a
second, a connection is handed to aiohttp for good, as it is when it is let in then.
What the door cannot frame (chunked bodies, ``Expect``, ``Upgrade``, ``HEAD``, a body
over the limit, an answer without a ``Content-Length`` or one that closes the
connection) makes the connection aiohttp's for good, with every byte read so far.
aiohttp's keep-alive timer (an hour by default) does not see the requests the door
answers: a connection whose every request is refused for that long is closed by it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast

from modelfleet.serving.errors import ServingError

IDLE_S = 75.0
"""A connection the door holds with no request under way is closed after this long
(aiohttp's own keep-alive timeout, which holds once the connection is aiohttp's)."""
HEAD_LIMIT = 16384
"""A longer head goes to aiohttp as it is (which answers 431 past its own limit)."""

_INFER_PATH = re.compile(rb"/v2/models/([A-Za-z0-9._-]+)(?:/versions/([A-Za-z0-9._-]+))?/infer")
_PASS = (b"transfer-encoding", b"expect", b"upgrade")
"""Headers the door leaves to aiohttp: bodies it does not frame, and handshakes."""


@dataclass(frozen=True, slots=True)
class Head:
    """What the door reads of an infer request's head."""

    model: str
    version: str | None
    length: int
    """The body's ``Content-Length``."""
    priority: str
    """``X-ModelFleet-Priority`` ("" when absent)."""
    timeout_us: str | None
    """``X-ModelFleet-Timeout-Us``."""
    header_length: str | None
    """``Inference-Header-Content-Length`` (binary tensors follow the JSON head)."""
    keep_alive: bool
    fields: Mapping[bytes, bytes] = field(default_factory=dict, compare=False, repr=False)
    """Every field of the head, by lower-cased name (what else a door reads: the
    gateway's version and session headers)."""
    at: float = field(default_factory=time.perf_counter, compare=False, repr=False)
    """When the door read the head (``time.perf_counter``): a refusal's latency."""


def parse_head(raw: bytes) -> Head | None:
    """The head of ``POST /v2/models/NAME[/versions/V]/infer HTTP/1.1`` with a
    ``Content-Length`` (``raw``: up to the blank line), or None for anything the
    door leaves to aiohttp."""
    lines = raw.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[0] != b"POST" or request_line[2] != b"HTTP/1.1":
        return None
    path = _INFER_PATH.fullmatch(request_line[1])
    if path is None:
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        key = name.lower()
        if not colon or key != key.strip() or key in fields or key in _PASS:
            return None  # folded, malformed, repeated or not ours: aiohttp decides
        fields[key] = value.strip()
    length = fields.get(b"content-length", b"")
    if not length.isdigit():
        return None
    version = path.group(2)
    header_length = fields.get(b"inference-header-content-length")
    timeout = fields.get(b"x-modelfleet-timeout-us")
    return Head(
        model=path.group(1).decode(),
        version=None if version is None else version.decode(),
        length=int(length),
        priority=fields.get(b"x-modelfleet-priority", b"").decode("latin-1"),
        timeout_us=None if timeout is None else timeout.decode("latin-1"),
        header_length=None if header_length is None else header_length.decode("latin-1"),
        keep_alive=b"close" not in fields.get(b"connection", b"").lower(),
        fields=fields,
    )  # fmt: skip


def answer(error: ServingError, keep_alive: bool) -> bytes:
    """``error`` as the handler's error middleware answers it: ``{"error": message}``
    with its status and headers."""
    body = json.dumps({"error": error.message}).encode()
    lines = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in error.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Pressure:
    """When a server's door last refused a request, shared by its connections."""

    __slots__ = ("_last", "window_s")

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._last = -window_s

    def refused(self) -> None:
        self._last = time.monotonic()

    def on(self) -> bool:
        """Whether the door refused a request in the last ``window_s``."""
        return time.monotonic() - self._last < self.window_s


class Door(Protocol):
    """The admission the door asks."""

    def lets_in(self, head: Head) -> bool:
        """True: the request goes to aiohttp at once, its body unread here (its model
        has room for it whatever its body says). The cheap check that keeps the door
        from costing a request anything when nothing is refused."""
        ...

    def refusal(self, head: Head, body: bytes) -> ServingError | None:
        """Whether to refuse the request, from its head and body (None: let it in)."""
        ...


def body_length(raw_head: bytes) -> int | None:
    """The body length of any request whose head is ``raw_head`` (up to the blank line),
    when the door can frame it: HTTP/1.1 with a ``Content-Length`` or no body. None for
    anything else (its connection then becomes aiohttp's for good)."""
    lines = raw_head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return None
    if request_line[0] in (b"HEAD", b"CONNECT"):
        return None  # an answer with a length and no body; a tunnel
    length: int | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        key = name.lower()
        if not colon or key != key.strip() or key in _PASS:
            return None
        if key == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return None
            length = int(value)
    return length or 0


def answer_length(raw_head: bytes) -> int | None:
    """The body length of an answer whose head is ``raw_head``, when the connection
    carries on after it: None for an interim answer, a chunked one, one without a
    ``Content-Length``, or one that closes the connection."""
    lines = raw_head.split(b"\r\n")
    status = lines[0][9:12]
    if not lines[0].startswith(b"HTTP/1.1 ") or not status.isdigit() or status[:1] == b"1":
        return None
    length: int | None = 0 if status in (b"204", b"304") else None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"transfer-encoding" or (key == b"connection" and b"close" in value.lower()):
            return None
        if key == b"content-length" and length is None:
            length = int(value.strip())
    return length


class _Answers:
    """The transport aiohttp's handler writes through: the connection's, with each
    write shown to the door on its way out (``seen``)."""

    __slots__ = ("_seen", "_transport")

    def __init__(self, transport: asyncio.Transport, seen: Callable[[bytes], None]) -> None:
        self._transport = transport
        self._seen = seen

    def write(self, data: bytes) -> None:
        self._transport.write(data)
        self._seen(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        chunks = list(chunks)
        self._transport.writelines(chunks)
        for chunk in chunks:
            self._seen(chunk)

    def is_closing(self) -> bool:  # each write asks
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class FrontDoor(asyncio.Protocol):
    """One connection, for its whole life (see the module)."""

    __slots__ = (
        "_answer_head",
        "_answer_left",
        "_body_at",
        "_chunks",
        "_door",
        "_for_good",
        "_handler",
        "_head",
        "_idle",
        "_idle_s",
        "_inner",
        "_max_body",
        "_owed",
        "_pending",
        "_pressure",
        "_size",
        "_transport",
    )  # fmt: skip

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        door: Door,
        max_body_bytes: int,
        idle_s: float = IDLE_S,
        pressure: Pressure | None = None,
    ) -> None:
        self._inner = inner
        self._pressure = pressure
        """None: each connection is aiohttp's from its first request let in."""
        self._door = door
        self._max_body = max_body_bytes
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._head: Head | None = None
        self._body_at = 0
        self._idle_s = idle_s
        self._idle: asyncio.TimerHandle | None = None
        self._handler: asyncio.Protocol | None = None
        """aiohttp's handler of the connection, once a request went to it."""
        self._pending = 0
        """Requests given to the handler that it has not answered yet."""
        self._owed = 0
        """Bytes of the last request given to the handler still to arrive (its too)."""
        self._for_good = False
        self._answer_head = bytearray()
        self._answer_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._wait_idle()

    def _wait_idle(self) -> None:
        self._idle = asyncio.get_running_loop().call_later(self._idle_s, self._close_idle)

    def _close_idle(self) -> None:
        self._idle = None
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        handler = self._handler
        if handler is not None:
            if self._for_good:
                self._flush()
                handler.data_received(data)
                return
            if self._owed:
                if len(data) <= self._owed:
                    self._owed -= len(data)
                    handler.data_received(data)
                    return
                handler.data_received(data[: self._owed])
                data = data[self._owed :]
                self._owed = 0
        self._chunks.append(data)
        self._size += len(data)
        self._advance()

    def eof_received(self) -> bool:
        if self._handler is not None:
            self._handler.eof_received()
        return False  # the client is done: the transport closes (a partial request too)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._transport = None
        self._chunks.clear()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def _buffered(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks[:] = [b"".join(self._chunks)]
        return self._chunks[0]

    def _advance(self) -> None:
        while self._transport is not None and self._chunks and not self._for_good:
            if not self._next():
                return

    def _next(self) -> bool:
        """Takes the next step with what is buffered; False: wait for more bytes."""
        if self._head is None:
            buffered = self._buffered()
            end = buffered.find(b"\r\n\r\n")
            if end < 0:
                if self._size > HEAD_LIMIT:
                    self._give_up()
                return False
            if self._handler is not None and not self._pending and not self._pressed():
                self._give_up()  # nothing refused for a while: aiohttp's for good
                return False
            raw = buffered[:end]
            # While aiohttp owes an answer, the next request is its too (in order).
            head = None if self._pending else parse_head(raw)
            if head is None:
                length = body_length(raw)
                if length is None:
                    self._give_up()
                    return False
                return self._let_in(end + 4 + length)
            if head.length > self._max_body:
                self._give_up()  # aiohttp answers 413
                return False
            if self._door.lets_in(head):
                return self._let_in(end + 4 + head.length)
            self._head, self._body_at = head, end + 4
        complete = self._body_at + self._head.length
        if self._size < complete:
            return False
        buffered = self._buffered()
        refused = self._door.refusal(self._head, buffered[self._body_at : complete])
        keep_alive, self._head = self._head.keep_alive, None
        if refused is None:
            return self._let_in(complete)
        assert self._transport is not None
        if self._pressure is not None:
            self._pressure.refused()
        self._transport.write(answer(refused, keep_alive))
        if not keep_alive:
            self._transport.close()
            self._transport = None
            return False
        rest = buffered[complete:]
        self._chunks[:] = [rest] if rest else []
        self._size = len(rest)
        if not rest:
            self._wait_idle()
        return True

    def _let_in(self, length: int) -> bool:
        """The next ``length`` bytes, one request, go to aiohttp's handler; True: more
        bytes are buffered after them."""
        if self._handler is None and not self._pressed():
            self._give_up()  # nothing refused lately: no reason to stay in between
            return False
        handler = self._handler or self._start_handler()
        self._pending += 1
        buffered = self._buffered()
        if length >= len(buffered):  # the usual case: no copy
            given, rest = buffered, b""
        else:
            given, rest = buffered[:length], buffered[length:]
        self._owed = length - len(given)
        self._chunks[:] = [rest] if rest else []
        self._size = len(rest)
        handler.data_received(given)
        return bool(rest)

    def _start_handler(self) -> asyncio.Protocol:
        assert self._transport is not None
        handler = self._handler = self._inner()
        handler.connection_made(cast(asyncio.Transport, _Answers(self._transport, self._seen)))
        return handler

    def _pressed(self) -> bool:
        return self._pressure is not None and self._pressure.on()

    def _give_up(self) -> None:
        """The connection becomes aiohttp's for good, with every byte read so far:
        its handler becomes the transport's protocol (the door is out of the way)."""
        transport = self._transport
        if transport is None:
            return
        self._for_good = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        handler = self._handler
        if handler is None:
            handler = self._handler = self._inner()
            transport.set_protocol(handler)
            handler.connection_made(transport)
        else:
            transport.set_protocol(handler)
        buffered = self._buffered() if self._chunks else b""
        self._chunks, self._size = [], 0
        if buffered:
            handler.data_received(buffered)

    def _seen(self, data: bytes) -> None:
        """What aiohttp's handler wrote: counts the answers it completes."""
        if self._for_good:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if not self._answer_left and not self._answer_head:
            end = data.find(b"\r\n\r\n")  # the usual write: one whole answer
            if end >= 0 and answer_length(data[:end]) == len(data) - end - 4:
                self._answered()
                return
        self._seen_pieces(data)

    def _seen_pieces(self, data: bytes) -> None:
        at = 0
        while at < len(data) and not self._for_good:
            if self._answer_left:
                taken = min(len(data) - at, self._answer_left)
                self._answer_left -= taken
                at += taken
                if not self._answer_left:
                    self._answered()
                continue
            data, at = data[at:], 0
            self._answer_head += data
            end = self._answer_head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._answer_head) > HEAD_LIMIT:
                    self._aiohttps()
                return
            length = answer_length(bytes(self._answer_head[:end]))
            data, at = bytes(self._answer_head[end + 4 :]), 0
            self._answer_head.clear()
            if length is None:
                self._aiohttps()  # or closing
                return
            self._answer_left = length
            if not length:
                self._answered()

    def _answered(self) -> None:
        self._pending -= 1
        if self._pending < 0 or (self._pending == 0 and self._owed):
            self._aiohttps()  # an answer before its request was whole
        elif self._pending == 0:
            if not self._pressed():
                self._aiohttps()  # nothing refused lately: aiohttp's for good
            elif self._chunks:
                asyncio.get_running_loop().call_soon(self._advance)

    def _aiohttps(self) -> None:
        """The connection becomes aiohttp's for good, from inside one of its writes:
        what the door holds goes to it before any later byte (``data_received``), then
        the handler becomes the transport's protocol, once aiohttp's write is over."""
        self._for_good = True
        asyncio.get_running_loop().call_soon(self._give_up)

    def _flush(self) -> None:
        if self._chunks and self._handler is not None and self._transport is not None:
            buffered = self._buffered()
            self._chunks, self._size = [], 0
            self._handler.data_received(buffered)
