"""``modelfleet gateway``: run the gateway until SIGTERM, then finish in-flight requests."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from modelfleet.runtime.auth import read_token
from modelfleet.runtime.config import with_flags
from modelfleet.runtime.eventloop import run
from modelfleet.runtime.gateway.admin import build_admin_app
from modelfleet.runtime.gateway.proxy import Gateway, build_gateway_app
from modelfleet.runtime.gateway.routes import RoutesDocument, RoutesError, load_routes

log = logging.getLogger("modelfleet.gateway")


async def serve(document: RoutesDocument) -> int:
    """Serves until SIGTERM or SIGINT; then readiness turns false, the listening
    sockets close, in-flight requests finish (up to ``drain_grace_s``) and it returns 0."""
    config = document.server
    gateway = Gateway(document)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    apps = [(build_gateway_app(gateway), config.port, "gateway")]
    token = read_token(config.admin_token_file)
    if token:
        apps.append((build_admin_app(gateway, token), config.admin_port, "gateway admin API"))
    runners = []
    try:
        for app, port, what in apps:
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, shutdown_timeout=config.drain_grace_s
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, config.host, port, backlog=1024, reuse_address=True).start()
            log.info("%s listening on http://%s:%d", what, config.host, port)
        await stop.wait()
        log.info("shutdown requested: finishing in-flight requests")
        gateway.draining = True
    finally:
        # AppRunner.cleanup closes the listening socket, then waits for the handlers
        # under way (up to shutdown_timeout) before it closes their connections.
        for runner in runners:
            await runner.cleanup()
        await gateway.close()
    log.info("stopped")
    return 0


def serve_from_args(args: argparse.Namespace) -> int:
    try:
        document = load_routes(args.routes)
    except RoutesError as exc:
        print(f"modelfleet gateway: {exc}", file=sys.stderr)
        return 2
    document = document.model_copy(update={"server": with_flags(document.server, args)})
    return run(serve(document))
