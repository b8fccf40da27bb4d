"""Ray Serve serving the example model: @serve.batch, one replica, one CPU.

Variable lengths (the zoo's BERT): ``@serve.batch`` hands the method the list
of requests and leaves the rest to the user. ``--lengths handled`` pads them to
the batch's longest; ``--lengths as-is`` concatenates them as the fixed-shape
models are.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request

from bench.peers.servers.common import (
    SEQUENCES,
    arguments,
    decode,
    encode,
    forward_concatenated,
    forward_padded,
    load,
)

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
    async def infer(self, inputs: list[Any]) -> list[Any]:
        if ARGS.model in SEQUENCES:
            if ARGS.lengths == "as-is":
                return forward_concatenated(self.model, inputs)
            return forward_padded(self.model, inputs)
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
