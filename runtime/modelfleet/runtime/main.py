"""``modelfleet serve``: run the runtime until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from functools import partial

from modelfleet.runtime.admin import build_admin_app
from modelfleet.runtime.config import ConfigError, RuntimeDocument, load_document
from modelfleet.runtime.grpc_server import build_grpc_server
from modelfleet.runtime.runtime import Runtime
from modelfleet.runtime.server import build_data_app, door
from modelfleet.serving.auth import read_token
from modelfleet.serving.eventloop import run
from modelfleet.serving.flags import with_flags
from modelfleet.serving.front_door import FrontDoor, Pressure
from modelfleet.serving.sites import serving

log = logging.getLogger("modelfleet.runtime")


async def serve(document: RuntimeDocument) -> int:
    config = document.server
    runtime = Runtime(document)
    async with serving(config.host, log) as sites:
        front = partial(
            FrontDoor, door=door(runtime), max_body_bytes=config.max_body_bytes, pressure=Pressure()
        )
        await sites.listen(build_data_app(runtime), config.port, "data API", front=front)
        token = read_token(config.admin_token_file)
        if config.grpc_port is not None:
            grpc_api = build_grpc_server(runtime, token)
            await sites.listen_grpc(grpc_api, config.grpc_port, "gRPC API")
        if token:
            admin = build_admin_app(runtime, token, sites.stop)
            await sites.listen(admin, config.admin_port, "admin API")
        else:
            log.info("admin API off (no admin_token_file configured)")

        starting = asyncio.create_task(runtime.start())
        waiter = asyncio.create_task(sites.stop.wait())
        await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            log.info("runtime ready")
            print(try_it(runtime), flush=True)
            await waiter
        log.info("shutdown requested: draining (grace %.1f s)", config.drain_grace_s)
        clean = await runtime.drain()
    starting.cancel()
    await runtime.close()
    log.info("stopped%s", "" if clean else " (grace ran out)")
    return 0


def try_it(runtime: Runtime) -> str:
    """Ready-to-paste requests for the models being served."""
    config = runtime.config
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    base = f"http://{host}:{config.port}"
    lines = [f"\nModelFleet runtime serving on {base}. Try:"]
    for model in runtime.repository.models.values():
        spec = model.config.inputs[0]
        shape = [1, *(d if d > 0 else 1 for d in spec.shape[1:])]
        count = 1
        for d in shape:
            count *= d
        values = ",".join(["0.5" if spec.datatype.startswith("FP") else "1"] * count)
        body = (
            f'{{"inputs":[{{"name":"{spec.name}","shape":{shape},'
            f'"datatype":"{spec.datatype}","data":[{values}]}}]}}'
        ).replace(" ", "")
        lines.append(f"  # {model.config.name} (version {model.config.version}, "
                     f"priority {model.config.priority})")  # fmt: skip
        if count <= 64:
            lines.append(f"  curl -s {base}/v2/models/{model.config.name}/infer -d '{body}'")
        else:
            lines.append(f"  curl -s {base}/v2/models/{model.config.name}   # metadata: "
                         f"input '{spec.name}' {spec.datatype} {list(spec.shape)}")  # fmt: skip
    lines.append(f"  curl -s {base}/metrics | grep modelfleet_requests_total")
    if config.grpc_port is not None:
        lines.append(f"  # OIP gRPC on {host}:{config.grpc_port}: "
                     f'tritonclient.grpc.InferenceServerClient("{host}:{config.grpc_port}")')  # fmt: skip
    return "\n".join(lines) + "\n"


def serve_from_args(args: argparse.Namespace) -> int:
    try:
        document = load_document(args.config)
    except ConfigError as exc:
        print(f"modelfleet serve: {exc}", file=sys.stderr)
        return 2
    document = document.model_copy(update={"server": with_flags(document.server, args)})
    try:
        return run(serve(document))
    except ConfigError as exc:  # a setting that only the running host can check
        print(f"modelfleet serve: {exc}", file=sys.stderr)
        return 2
