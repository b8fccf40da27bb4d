"""A trivially fast OIP-shaped upstream for the gateway benchmark."""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = b'{"model_name":"echo","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[1.0]}]}'


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json",
                        headers={"X-ModelFleet-Queue-Depth": "0"})  # fmt: skip


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
