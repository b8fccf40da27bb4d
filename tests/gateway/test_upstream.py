"""The gateway's pooled HTTP/1.1 client against scripted servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from modelfleet.gateway.upstream import UpstreamError, Upstreams
from tests.support.servers import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
Script = Callable[[bytes, int], bytes | None]
"""(request bytes, connection's request number) -> bytes to answer; None closes."""


class Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.script(request, served)
                served += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[[Script], Awaitable[Scripted]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[tuple[asyncio.Server, Scripted]] = []

    async def start(script: Script) -> Scripted:
        scripted = Scripted(script)
        port = free_port()
        servers.append((await asyncio.start_server(scripted.handle, "127.0.0.1", port), scripted))
        scripted.url = f"http://127.0.0.1:{port}"
        return scripted

    yield start
    for server, scripted in servers:
        server.close()
        for writer in scripted.writers:
            writer.close()
    await asyncio.sleep(0.05)  # the handlers see their connections end


async def test_a_connection_is_kept_alive_and_reused(serve: Serve) -> None:
    server = await serve(lambda req, n: OK)
    pool = Upstreams()
    for _ in range(3):
        answer = await pool.request(server.url, "POST", "/v2/x", {"A": "b"}, b"[1]")
        assert (answer.status, answer.body, answer.headers["content-type"]) == (
            200, b"{}", "application/json",
        )  # fmt: skip
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v2/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nA: b\r\n" in first and first.endswith(b"Content-Length: 3\r\n\r\n[1]")
    pool.close()


async def test_chunked_and_until_close_bodies_are_read_whole(serve: Serve) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n"
    )
    server = await serve(lambda req, n: chunked)
    pool = Upstreams()
    assert (await pool.request(server.url, "GET", "/", {}, None)).body == b"abcdefg"
    assert (await pool.request(server.url, "GET", "/", {}, None)).body == b"abcdefg"
    assert server.connections == 1

    closing = await serve(
        lambda req, n: b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n" + b"x" * 70_000
    )
    answer = await pool.request(closing.url, "GET", "/", {}, None)
    assert (answer.status, len(answer.body)) == (404, 70_000)
    pool.close()


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced_silently(
    serve: Serve,
) -> None:
    server = await serve(lambda req, n: OK if n == 0 else None)
    pool = Upstreams()
    for _ in range(3):  # each connection serves one request, then the server drops it
        assert (await pool.request(server.url, "GET", "/", {}, None)).status == 200
    assert server.connections >= 3
    pool.close()


async def test_refused_reset_and_garbled_exchanges_raise_upstream_error(
    serve: Serve,
) -> None:
    pool = Upstreams()
    with pytest.raises(UpstreamError, match="cannot connect"):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", "/", {}, None)
    cut = await serve(lambda req, n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    task = asyncio.ensure_future(pool.request(cut.url, "GET", "/", {}, None))
    await asyncio.sleep(0.2)
    assert not task.done()  # the rest of the body may still come
    pool.close()  # the gateway shuts down: the exchange fails
    with pytest.raises(UpstreamError, match="closed before the answer"):
        await task
    garbled = await serve(lambda req, n: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(UpstreamError, match="bad status line"):
        await Upstreams().request(garbled.url, "GET", "/", {}, None)


async def test_a_timed_out_exchange_closes_its_connection(serve: Serve) -> None:
    slow = await serve(lambda req, n: b"")
    pool = Upstreams()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request(slow.url, "POST", "/", {}, b"x")
    assert not pool._idle.get(pool._target(slow.url))  # never handed out again
    pool.close()
