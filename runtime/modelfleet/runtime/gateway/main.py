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
from modelfleet.runtime.gateway.proxy import Gateway, build_gateway_app, drain
from modelfleet.runtime.gateway.routes import RoutesDocument, RoutesError, load_routes

log = logging.getLogger("modelfleet.gateway")


async def serve(document: RoutesDocument, grace_s: float = 30) -> int:
    config = document.server
    gateway = Gateway(document)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    apps = [(build_gateway_app(gateway), config.port, "gateway")]
    token = read_token(config.admin_token_file)
    if token:
        apps.append((build_admin_app(gateway, token), config.admin_port, "gateway admin API"))
    for app, port, what in apps:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, config.host, port, backlog=1024, reuse_address=True).start()
        runners.append(runner)
        log.info("%s listening on http://%s:%d", what, config.host, port)
    await stop.wait()
    log.info("shutdown requested: finishing in-flight requests")
    await drain(gateway, grace_s)
    for runner in reversed(runners):
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
