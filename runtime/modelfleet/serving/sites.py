"""Start-up and graceful shutdown of a server process's listening sites (the
runtime's and the gateway's data and admin APIs, REST and gRPC)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from aiohttp import web

Front = Callable[[Callable[[], asyncio.Protocol]], asyncio.Protocol]
"""A connection's first protocol, given the factory of aiohttp's handler."""


class Sites:
    """The listening sites of one process, and the event that asks them to stop."""

    def __init__(self, host: str, log: logging.Logger, shutdown_timeout_s: float) -> None:
        self.host = host
        self.log = log
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stop = asyncio.Event()
        """Set by SIGTERM or SIGINT (or by an admin API that drains): time to shut down."""
        self._runners: list[web.AppRunner] = []
        self._fronts: list[asyncio.AbstractServer] = []
        self._grpc: list[grpc.aio.Server] = []

    async def listen(
        self, app: web.Application, port: int, what: str, *, front: Front | None = None
    ) -> None:
        """Serves ``app`` on ``host:port`` and logs "<what> listening on http://host:port".
        ``front``: each connection's protocol until it hands the connection to
        aiohttp's handler (made by the factory it is given)."""
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout_s
        )
        await runner.setup()
        self._runners.append(runner)
        if front is None:
            await web.TCPSite(runner, self.host, port, backlog=1024, reuse_address=True).start()
        else:
            handler = runner.server
            assert handler is not None
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: front(handler), self.host, port, backlog=1024, reuse_address=True
            )
            self._fronts.append(server)
        self.log.info("%s listening on http://%s:%d", what, self.host, port)

    async def listen_grpc(self, server: grpc.aio.Server, port: int, what: str) -> int:
        """Starts ``server`` on ``host:port`` (0: a free port) and returns the port."""
        bound = server.add_insecure_port(f"{self.host}:{port}")
        if bound == 0:
            raise OSError(f"{what}: cannot listen on {self.host}:{port}")
        await server.start()
        self._grpc.append(server)
        self.log.info("%s listening on grpc://%s:%d", what, self.host, bound)
        return bound

    async def close(self) -> None:
        """Closes the sites in the order they started. Each closes its listening
        socket, then waits for the handlers under way (up to the shutdown timeout)
        before it closes their connections."""
        for server in self._grpc:
            await server.stop(self.shutdown_timeout_s)
        self._grpc.clear()
        for front in self._fronts:  # the listening sockets; handlers drain below
            front.close()
        self._fronts.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


@asynccontextmanager
async def serving(
    host: str, log: logging.Logger, *, shutdown_timeout_s: float = 60.0
) -> AsyncIterator[Sites]:
    """The sites that the block opens with ``listen``, closed when it ends (also on
    an error); SIGTERM and SIGINT set ``stop`` instead of killing the process.
    ``shutdown_timeout_s`` bounds the wait for in-flight handlers (aiohttp's
    default is 60 s)."""
    sites = Sites(host, log, shutdown_timeout_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sites.stop.set)
    try:
        yield sites
    finally:
        await sites.close()
