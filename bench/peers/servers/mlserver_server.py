"""MLServer serving the example model through a custom runtime with adaptive batching.

Writes MLServer's settings files into a temporary folder and runs `mlserver start`.

Variable lengths (the zoo's BERT): the adaptive batcher merges the queued
requests before the model sees them, by joining their flat ``data`` lists and
keeping the first request's shape with the rows summed
(``mlserver/batching/requests.py``), so requests of different lengths arrive
as one tensor whose data does not fit its shape, and the model cannot pad
them. ``--lengths handled`` turns adaptive batching off (MLServer's default:
requests one by one); ``--lengths as-is`` keeps it on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from bench.peers.servers.common import SEQUENCES, arguments

ARGS = arguments()


def main() -> None:
    folder = tempfile.mkdtemp(prefix="mlserver-")
    one_by_one = ARGS.model in SEQUENCES and ARGS.lengths == "handled"
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump({"http_port": ARGS.port, "grpc_port": ARGS.port + 1, "metrics_port": ARGS.port + 2,
                   "host": "127.0.0.1", "parallel_workers": 0, "debug": False}, f)  # fmt: skip
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump({
            "name": ARGS.model,
            "implementation": "bench.peers.servers.mlserver_model.TorchModel",
            "max_batch_size": 1 if one_by_one else ARGS.max_batch,
            "max_batch_time": ARGS.max_wait_ms / 1000,
            "parameters": {"extra": {"model": ARGS.model, "model_dir": ARGS.model_dir,
                                     "threads": ARGS.threads}},
        }, f)  # fmt: skip
    exe = os.path.join(os.path.dirname(sys.executable), "mlserver")
    os.execv(exe, [exe, "start", folder])


if __name__ == "__main__":
    main()
