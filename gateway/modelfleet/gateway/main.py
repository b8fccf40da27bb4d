"""``modelfleet gateway``: run the gateway until SIGTERM, then finish in-flight requests."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

from modelfleet.gateway.admin import build_admin_app
from modelfleet.gateway.door import door
from modelfleet.gateway.grpc_proxy import build_grpc_proxy
from modelfleet.gateway.proxy import Gateway, build_gateway_app
from modelfleet.gateway.routes import RoutesDocument, RoutesError, load_routes
from modelfleet.serving import heap
from modelfleet.serving.auth import read_token
from modelfleet.serving.eventloop import run
from modelfleet.serving.flags import with_flags
from modelfleet.serving.front_door import FrontDoor, Pressure
from modelfleet.serving.sites import serving

log = logging.getLogger("modelfleet.gateway")


async def serve(document: RoutesDocument) -> int:
    """Serves REST (and gRPC when ``grpc_port`` is set) until SIGTERM or SIGINT; then
    readiness turns false, new infer requests are refused, the listening sockets
    close, in-flight requests finish (up to ``drain_grace_s``) and it returns 0."""
    config = document.server
    gateway = Gateway(document)
    try:
        async with serving(config.host, log, shutdown_timeout_s=config.drain_grace_s) as sites:
            front = partial(
                FrontDoor,
                door=door(gateway),
                max_body_bytes=config.max_body_bytes,
                pressure=Pressure(),
            )
            await sites.listen(build_gateway_app(gateway), config.port, "gateway", front=front)
            if config.grpc_port is not None:
                await sites.listen_grpc(build_grpc_proxy(gateway), config.grpc_port, "gateway gRPC")
            token = read_token(config.admin_token_file)
            if token:
                admin = build_admin_app(gateway, token)
                await sites.listen(admin, config.admin_port, "gateway admin API")
            heap.settle()  # the imported libraries out of the full collections' walk
            await sites.stop.wait()
            log.info("shutdown requested: finishing in-flight requests")
            gateway.draining = True
    finally:
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
