"""Ray Serve serving the example model: @serve.batch, one replica, one CPU."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request

from bench.peers.servers.common import arguments, decode, encode, load

ARGS = arguments()


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=max(2 * ARGS.max_batch, 64),
    ray_actor_options={"num_cpus": 1},
)
class Model:
    def __init__(self) -> None:
        self.model = load(ARGS.model, ARGS.model_dir, ARGS.threads)

    @serve.batch(max_batch_size=ARGS.max_batch, batch_wait_timeout_s=ARGS.max_wait_ms / 1000)
    async def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(x) for x in inputs]
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.concatenate(inputs))).numpy()
        parts, offset = [], 0
        for n in sizes:
            parts.append(out[offset : offset + n])
            offset += n
        return parts

    async def __call__(self, request: Request) -> dict:  # type: ignore[type-arg]
        rows = await self.infer(decode(ARGS.model, await request.json()))
        return encode(ARGS.model, rows)


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": ARGS.port})
    serve.run(Model.bind(), route_prefix=f"/v2/models/{ARGS.model}/infer")
    while True:
        time.sleep(3600)
