"""LitServe serving the example model: batching by LitServe, one worker.

Variable lengths (the zoo's BERT): LitServe hands ``batch()`` the list of
decoded requests and leaves the rest to the user. ``--lengths handled`` keeps the
list and pads it in ``predict`` (to the batch's longest request);
``--lengths as-is`` decodes each request into one tensor and leaves
``batch()`` to LitServe's default, which stacks them (``torch.stack``).
"""

from __future__ import annotations

from typing import Any

import litserve as ls
import numpy as np
import torch

from bench.peers.servers.common import SEQUENCES, arguments, decode, encode, forward_padded, load

ARGS = arguments()
SEQUENCE = ARGS.model in SEQUENCES
AS_IS = SEQUENCE and ARGS.lengths == "as-is"


class API(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = load(ARGS.model, ARGS.model_dir, ARGS.threads)

    def decode_request(self, request: dict) -> Any:  # type: ignore[type-arg]
        x = decode(ARGS.model, request)
        if AS_IS:  # ids and mask as one tensor [2, rows, length]
            return torch.from_numpy(np.stack(x))
        return x

    def batch(self, inputs: list[Any]) -> Any:
        if AS_IS:
            return super().batch(inputs)  # LitServe's default
        if SEQUENCE:
            return inputs
        return torch.from_numpy(np.concatenate(inputs))

    def predict(self, x: Any) -> Any:
        if AS_IS:  # [B, 2, rows, length]
            ids, mask = (x[:, i].reshape(-1, x.shape[-1]) for i in (0, 1))
            with torch.inference_mode():
                out = self.model(ids, mask)
            rows = x.shape[2]
            return [{k: v[i * rows : (i + 1) * rows].numpy() for k, v in out.items()}
                    for i in range(x.shape[0])]  # fmt: skip
        if SEQUENCE:
            return forward_padded(self.model, x)
        with torch.inference_mode():
            return self.model(x).numpy()

    def unbatch(self, output: Any) -> list[Any]:
        if SEQUENCE:
            return list(output)
        return [output[i : i + 1] for i in range(len(output))]

    def encode_response(self, output: Any) -> dict:  # type: ignore[type-arg]
        return encode(ARGS.model, output)


if __name__ == "__main__":
    api = API(
        max_batch_size=ARGS.max_batch,
        batch_timeout=ARGS.max_wait_ms / 1000,
        api_path=f"/v2/models/{ARGS.model}/infer",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=ARGS.port, generate_client_file=False, log_level="warning",
               num_api_servers=1)  # fmt: skip
