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
connection's next request; anything else (a request admitted, another method or
path, ``Expect``, chunked bodies, a body over the limit) goes to aiohttp's own
handler with every byte read so far, and the connection is aiohttp's from then on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol, cast

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


class FrontDoor(asyncio.Protocol):
    """One connection until its first request that is not refused (see the module)."""

    __slots__ = (
        "_body_at",
        "_chunks",
        "_door",
        "_head",
        "_idle",
        "_idle_s",
        "_inner",
        "_max_body",
        "_size",
        "_transport",
    )  # fmt: skip

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        door: Door,
        max_body_bytes: int,
        idle_s: float = IDLE_S,
    ) -> None:
        self._inner = inner
        self._door = door
        self._max_body = max_body_bytes
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._head: Head | None = None
        self._body_at = 0
        self._idle_s = idle_s
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._wait_idle()

    def _wait_idle(self) -> None:
        self._idle = asyncio.get_running_loop().call_later(self._idle_s, self._close_idle)

    def _close_idle(self) -> None:
        self._idle = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._chunks.append(data)
        self._size += len(data)
        while self._transport is not None and self._chunks:
            if not self._next():
                return

    def eof_received(self) -> bool:
        return False  # the client is done: the transport closes (a partial request too)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._transport = None
        self._chunks.clear()

    def _buffered(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks[:] = [b"".join(self._chunks)]
        return self._chunks[0]

    def _next(self) -> bool:
        """Takes the next step with what is buffered; False: wait for more bytes."""
        if self._head is None:
            buffered = self._buffered()
            end = buffered.find(b"\r\n\r\n")
            if end < 0:
                if self._size > HEAD_LIMIT:
                    self._hand_over()
                return False
            head = parse_head(buffered[:end])
            if head is None or head.length > self._max_body or self._door.lets_in(head):
                self._hand_over()
                return False
            self._head, self._body_at = head, end + 4
        complete = self._body_at + self._head.length
        if self._size < complete:
            return False
        buffered = self._buffered()
        refused = self._door.refusal(self._head, buffered[self._body_at : complete])
        if refused is None:
            self._hand_over()
            return False
        assert self._transport is not None
        self._transport.write(answer(refused, self._head.keep_alive))
        if not self._head.keep_alive:
            self._transport.close()
            self._transport = None
            return False
        rest = buffered[complete:]
        self._chunks[:] = [rest] if rest else []
        self._size, self._head = len(rest), None
        if not rest:
            self._wait_idle()
        return True

    def _hand_over(self) -> None:
        """The connection becomes aiohttp's, with every byte read so far."""
        transport = self._transport
        assert transport is not None
        handler = self._inner()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        buffered = self._buffered() if self._chunks else b""
        self._transport, self._chunks = None, []
        if buffered:
            handler.data_received(buffered)
