"""Kept-alive HTTP/1.1 connections to the runtimes, pooled per endpoint.

A small client on asyncio protocols rather than ``aiohttp.ClientSession``: the
gateway only ever sends one request at a time per connection, with a body it
already holds in memory, and reads a response of known length. On one core that
costs about 40 us a request where aiohttp's client costs about 250 us, which is
what lets one gateway core pass more than 3,000 requests a second
(``bench/gateway_bench.py``). The body is written as received and the answer's
body is copied once, out of the socket buffer.

Errors: :class:`UpstreamError` means the endpoint could not be reached or broke
the connection (retry elsewhere); ``TimeoutError`` means it did not answer in time.

gRPC goes through :class:`GrpcChannels`: one long-lived ``grpc.aio`` channel per
runtime target, HTTP/2 multiplexing every call to it over one connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import grpc

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_ENDPOINT = 256
_LARGE_BODY = 64 * 1024


class UpstreamError(ConnectionError):
    """The endpoint refused, reset or garbled the exchange; another may do better."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    ssl: bool
    authority: str


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.received = False
        """Whether any byte of the current exchange has arrived."""
        self._buffer = bytearray()
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._head: tuple[int, dict[str, str]] | None = None
        self._length: int | None = None
        """Body length; -1 for chunked; None for 'until the connection closes'."""
        self._chunks: list[bytes] = []
        self._head_only = False

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head is not None and self._length is None:
            self._finish(bytes(self._buffer))  # the body ran until the close
        else:
            reason = f": {exc}" if exc else ""
            waiter.set_exception(UpstreamError(f"connection closed before the answer{reason}"))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # nobody asked: the connection cannot be trusted any more
            return
        self.received = True
        self._buffer += data
        try:
            self._parse()
        except ValueError as exc:
            waiter.set_exception(UpstreamError(f"malformed answer: {exc}"))
            self.close()

    # -- exchange --------------------------------------------------------------------

    def send(
        self, head: bytes, body: bytes | None, head_only: bool
    ) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self._head_only = head_only
        if body and len(body) > _LARGE_BODY:
            self.transport.write(head)
            self.transport.write(body)  # not concatenated: no copy of a large body
        else:
            self.transport.write(head + body if body else head)
        return self._waiter

    def done(self) -> None:
        """The exchange is over (answered, failed or abandoned)."""
        if self._waiter is not None and not self._waiter.done():
            self.reusable = False  # abandoned mid-way: the answer may still come
        self._waiter = None
        self._head = None
        self._chunks = []

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    @property
    def idle_ok(self) -> bool:
        return self.reusable and not self.closed and self.transport is not None and (
            not self.transport.is_closing()
        )  # fmt: skip

    # -- parsing ---------------------------------------------------------------------

    def _parse(self) -> None:
        if self._head is None and not self._parse_head():
            return
        if self._length is None:
            return  # read until the connection closes
        if self._length >= 0:
            if len(self._buffer) >= self._length:
                body = bytes(memoryview(self._buffer)[: self._length])
                del self._buffer[: self._length]
                self._finish(body)
            return
        self._parse_chunks()

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ValueError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            return False
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            return self._parse_head() if self._buffer else False  # interim answer: skip
        connection = headers.get("connection", "").lower()
        if "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection):
            self.reusable = False
        if self._head_only or status in (204, 304):
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._length = -1
        elif "content-length" in headers:
            self._length = int(headers["content-length"])
        else:
            self._length = None
            self.reusable = False
        self._head = (status, headers)
        return True

    def _parse_chunks(self) -> None:
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self._buffer[:line_end]).split(b";")[0], 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                if self._buffer[line_end + 2 : line_end + 4] == b"\r\n":
                    end = line_end + 4
                else:
                    found = self._buffer.find(b"\r\n\r\n", line_end + 2)
                    if found < 0:
                        return
                    end = found + 4
                del self._buffer[:end]
                self._finish(b"".join(self._chunks))
                return
            start = line_end + 2
            if len(self._buffer) < start + size + 2:
                return
            self._chunks.append(bytes(memoryview(self._buffer)[start : start + size]))
            del self._buffer[: start + size + 2]

    def _finish(self, body: bytes) -> None:
        assert self._head is not None and self._waiter is not None
        if self._buffer:
            self.reusable = False  # bytes past the answer: out of step
        status, headers = self._head
        self._waiter.set_result(UpstreamResponse(status, headers, body))


class Upstreams:
    """Idle connections per endpoint; a request takes one or opens one."""

    def __init__(self, connect_timeout_s: float = 1.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[_Target, list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._busy: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None

    def _target(self, base_url: str) -> _Target:
        target = self._targets.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            secure = parts.scheme == "https"
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if secure else 80)
            target = _Target(host, port, secure, parts.netloc)
            self._targets[base_url] = target
        return target

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if target.ssl:
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    _Connection, target.host, target.port, ssl=context
                )
        except OSError as exc:
            raise UpstreamError(f"cannot connect: {exc}") from exc
        except TimeoutError:
            raise UpstreamError(f"no connection within {self.connect_timeout_s} s") from None
        return connection

    async def request(
        self, base_url: str, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """One exchange. The caller bounds the time (``asyncio.timeout``)."""
        target = self._target(base_url)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {target.authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        raw_head = "\r\n".join(lines).encode("latin-1")
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if not connection.idle_ok:
                connection.close()
                continue
            try:
                return await self._exchange(target, connection, raw_head, body, method)
            except UpstreamError:
                if connection.received:
                    raise
                # A kept-alive connection the endpoint had closed meanwhile: try a fresh one.
                break
        connection = await self._connect(target)
        return await self._exchange(target, connection, raw_head, body, method)

    async def _exchange(
        self, target: _Target, connection: _Connection, head: bytes, body: bytes | None, method: str
    ) -> UpstreamResponse:
        self._busy.add(connection)
        try:
            response = await connection.send(head, body, method == "HEAD")
        except BaseException:
            connection.done()
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
        connection.done()
        idle = self._idle.setdefault(target, [])
        if connection.idle_ok and len(idle) < MAX_IDLE_PER_ENDPOINT:
            idle.append(connection)
        else:
            connection.close()
        return response

    def forget(self, base_url: str) -> None:
        """Closes the idle connections to an endpoint (it failed, or left the routes)."""
        target = self._targets.get(base_url)
        for connection in self._idle.pop(target, []) if target else []:
            connection.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()


_Connectivity = grpc.ChannelConnectivity
BytesMethod = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
"""A unary RPC that sends and receives messages as bytes, never decoded."""


class GrpcChannels:
    """One long-lived channel per gRPC target (``host:port``), opened on first use.

    Messages pass as bytes, with no size limit on this side: the gateway's gRPC
    server already bounds what it accepts (``max_body_bytes``) and REST bounds no
    answer either. Each channel has its own subchannel (``use_local_subchannel_pool``):
    a channel opened to replace a failed one connects afresh instead of sharing the
    failed one's reconnect backoff.
    """

    OPTIONS = (
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),
    )
    CLOSE_GRACE_S = 300.0
    """How long the calls under way on a dropped channel may take to finish (their
    own deadlines, the route's timeout at most, end them sooner)."""

    def __init__(self, connect_timeout_s: float = 1.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._methods: dict[tuple[str, str], BytesMethod] = {}
        self._retired: dict[asyncio.Task[None], grpc.aio.Channel] = {}

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(
                target, options=self.OPTIONS
            )
        return channel

    def method(self, target: str, path: str) -> BytesMethod:
        """The RPC ``path`` (``/package.Service/Method``) on ``target``'s channel."""
        key = (target, path)
        method = self._methods.get(key)
        if method is None:
            method = self._methods[key] = self._channel(target).unary_unary(path)
        return method

    def connected(self, target: str) -> bool:
        """Whether ``target``'s channel is connected now (False when it has none)."""
        channel = self._channels.get(target)
        return channel is not None and channel.get_state() is _Connectivity.READY

    async def connect(self, target: str, within_s: float | None = None) -> None:
        """Returns once the channel to ``target`` is connected (at once when it is).
        Raises :class:`UpstreamError` when the connection is refused or not made
        within ``connect_timeout_s``, and ``TimeoutError`` when ``within_s`` (the
        request's time left) is shorter and runs out first. Nothing has been sent
        when it raises, so another endpoint may be tried without a doubt."""
        channel = self._channel(target)
        state = channel.get_state(try_to_connect=True)
        if state is _Connectivity.READY:
            return
        hurried = within_s is not None and within_s < self.connect_timeout_s
        limit = within_s if within_s is not None and hurried else self.connect_timeout_s
        try:
            async with asyncio.timeout(limit):
                while state is not _Connectivity.READY:
                    if state in (_Connectivity.TRANSIENT_FAILURE, _Connectivity.SHUTDOWN):
                        raise UpstreamError(f"cannot connect to {target}")
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            if hurried:
                raise
            raise UpstreamError(
                f"no connection to {target} within {self.connect_timeout_s:.3g} s"
            ) from None
        except grpc.aio.UsageError:  # dropped meanwhile (failed, or left the routes)
            raise UpstreamError(f"the channel to {target} was closed") from None

    def forget(self, target: str, grace_s: float | None = None) -> None:
        """Drops ``target``'s channel (it failed, or left the routes): the next call
        opens a new one; calls under way on it have ``grace_s`` (default
        ``CLOSE_GRACE_S``) to finish before they are cancelled."""
        channel = self._channels.pop(target, None)
        if channel is None:
            return
        for key in [k for k in self._methods if k[0] == target]:
            del self._methods[key]
        grace = self.CLOSE_GRACE_S if grace_s is None else grace_s
        task = asyncio.get_running_loop().create_task(channel.close(grace or None))
        self._retired[task] = channel
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._retired.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logging.getLogger("modelfleet.gateway").warning(
                "closing a gRPC channel failed: %s", task.exception()
            )

    async def close(self) -> None:
        """Closes every channel now, the dropped ones still closing too."""
        retired = list(self._retired.items())
        for task, _ in retired:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retired), return_exceptions=True)
        channels = [*self._channels.values(), *(channel for _, channel in retired)]
        self._channels.clear()
        self._methods.clear()
        for channel in channels:
            await channel.close(None)
