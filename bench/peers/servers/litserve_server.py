"""LitServe serving the example model: batching by LitServe, one worker."""

from __future__ import annotations

import litserve as ls
import numpy as np
import torch

from bench.peers.servers.common import arguments, decode, encode, load

ARGS = arguments()


class API(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = load(ARGS.model, ARGS.model_dir, ARGS.threads)

    def decode_request(self, request: dict) -> np.ndarray:  # type: ignore[type-arg]
        return decode(ARGS.model, request)

    def batch(self, inputs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(inputs))

    def predict(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(x).numpy()

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return [output[i : i + 1] for i in range(len(output))]

    def encode_response(self, output: np.ndarray) -> dict:  # type: ignore[type-arg]
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
