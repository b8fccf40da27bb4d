"""What every peer server shares: the same model files, loaded the same way,
and the same OIP-shaped JSON payload (so the decode work is comparable)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from modelfleet.runtime.examples import cnn, mlp

SHAPES = {"mlp": (16,), "cnn": (1, 28, 28)}
NAMES = {"mlp": ("input", "output"), "cnn": ("image", "logits")}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(SHAPES), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def load(name: str, model_dir: str, threads: int) -> torch.nn.Module:
    """The safetensors file plus the architecture, eval mode: as ModelFleet loads it."""
    torch.set_num_threads(threads)
    module = {"mlp": mlp, "cnn": cnn}[name]()
    module.load_state_dict(load_file(f"{model_dir}/{name}.safetensors"))
    return module.eval()


def decode(name: str, body: dict[str, Any]) -> np.ndarray:
    """One OIP request's first input as a float32 array of one or more rows."""
    item = body["inputs"][0]
    return np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])


def encode(name: str, rows: np.ndarray) -> dict[str, Any]:
    return {
        "model_name": name,
        "outputs": [
            {"name": NAMES[name][1], "datatype": "FP32", "shape": list(rows.shape),
             "data": rows.reshape(-1).tolist()}
        ],
    }  # fmt: skip
