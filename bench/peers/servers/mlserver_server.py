"""MLServer serving the example model through a custom runtime with adaptive batching.

Writes MLServer's settings files into a temporary folder and runs `mlserver start`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from bench.peers.servers.common import arguments

ARGS = arguments()


def main() -> None:
    folder = tempfile.mkdtemp(prefix="mlserver-")
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump({"http_port": ARGS.port, "grpc_port": ARGS.port + 1, "metrics_port": ARGS.port + 2,
                   "host": "127.0.0.1", "parallel_workers": 0, "debug": False}, f)  # fmt: skip
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump({
            "name": ARGS.model,
            "implementation": "bench.peers.servers.mlserver_model.TorchModel",
            "max_batch_size": ARGS.max_batch,
            "max_batch_time": ARGS.max_wait_ms / 1000,
            "parameters": {"extra": {"model": ARGS.model, "model_dir": ARGS.model_dir,
                                     "threads": ARGS.threads}},
        }, f)  # fmt: skip
    exe = os.path.join(os.path.dirname(sys.executable), "mlserver")
    os.execv(exe, [exe, "start", folder])


if __name__ == "__main__":
    main()
