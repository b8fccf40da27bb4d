"""What every peer server shares: the same model files, loaded the same way,
and the same OIP-shaped JSON payload (so the decode work is comparable).

Fixed-shape models (the example MLP and CNN) take one FP32 input. The zoo's
BERT takes ``ids`` and ``mask`` INT64 [rows, length], the length varying from
request to request, and answers ``pooled`` [rows, 64] and ``tokens``
[rows, length, 64]. A server batches them one of two ways (``--lengths``):

* ``handled``: what a user of the peer writes for variable lengths; where the
  peer hands the user a list of requests (LitServe, Ray Serve), the batch's
  requests right-padded with 0 (ids and mask) to the longest of them,
  concatenated, one forward pass, and each request's ``tokens`` cut back to
  its own length (``forward_padded``);
* ``as-is``: as for fixed shapes: the peer's default batching, or the requests
  concatenated as they come (``forward_concatenated``), which fails when their
  lengths differ: the bench runs it to record what happens out of the box.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from modelfleet.runtime.examples import cnn, mlp
from modelfleet.runtime.zoo import bert

SHAPES = {"mlp": (16,), "cnn": (1, 28, 28)}
NAMES = {"mlp": ("input", "output"), "cnn": ("image", "logits")}
SEQUENCES = {"bert": (("ids", "mask"), ("pooled", "tokens"))}
"""Variable-length models: their input names and output names."""
FACTORIES: dict[str, Callable[[], torch.nn.Module]] = {"mlp": mlp, "cnn": cnn, "bert": bert}

Sentences = tuple[np.ndarray, np.ndarray]
"""One request of a sequence model: ``ids`` and ``mask``, INT64 [rows, length]."""
Answer = dict[str, np.ndarray]
"""One request's outputs by name."""


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(FACTORIES), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", choices=["handled", "as-is"], default="handled",
                        help="variable lengths: the server's code for them, or batched "
                        "as fixed shapes are (to see what happens out of the box)")  # fmt: skip
    return parser.parse_args()


def load(name: str, model_dir: str, threads: int) -> torch.nn.Module:
    """The safetensors file plus the architecture, eval mode: as ModelFleet loads it."""
    torch.set_num_threads(threads)
    module = FACTORIES[name]()
    module.load_state_dict(load_file(f"{model_dir}/{name}.safetensors"))
    return module.eval()


def decode(name: str, body: dict[str, Any]) -> Any:
    """One OIP request's input: a float32 array of one or more rows (fixed-shape
    models), or ``(ids, mask)`` as int64 arrays (sequence models)."""
    if name in SEQUENCES:
        items = {item["name"]: item for item in body["inputs"]}
        ids, mask = (
            np.asarray(items[n]["data"], dtype=np.int64).reshape(items[n]["shape"])
            for n in SEQUENCES[name][0]
        )
        return ids, mask
    item = body["inputs"][0]
    return np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])


def encode(name: str, rows: np.ndarray | Answer) -> dict[str, Any]:
    """An OIP response: the fixed-shape model's output rows, or a sequence model's
    outputs by name."""
    outputs = rows if isinstance(rows, dict) else {NAMES[name][1]: rows}
    return {
        "model_name": name,
        "outputs": [
            {"name": key, "datatype": "FP32", "shape": list(value.shape),
             "data": value.reshape(-1).tolist()}
            for key, value in outputs.items()
        ],
    }  # fmt: skip


def pad_batch(requests: Sequence[Sentences]) -> tuple[torch.Tensor, torch.Tensor]:
    """The requests' ids and masks right-padded with 0 to the longest of them and
    concatenated along rows: what ``transformers``' dynamic padding does."""
    longest = max(ids.shape[1] for ids, _ in requests)
    rows = sum(ids.shape[0] for ids, _ in requests)
    ids_out = np.zeros((rows, longest), dtype=np.int64)
    mask_out = np.zeros((rows, longest), dtype=np.int64)
    start = 0
    for ids, mask in requests:
        n, length = ids.shape
        ids_out[start : start + n, :length] = ids
        mask_out[start : start + n, :length] = mask
        start += n
    return torch.from_numpy(ids_out), torch.from_numpy(mask_out)


def split(outputs: dict[str, torch.Tensor], requests: Sequence[Sentences]) -> list[Answer]:
    """Each request's rows of a batch's outputs, ``tokens`` cut to its own length."""
    answers, start = [], 0
    pooled, tokens = outputs["pooled"].numpy(), outputs["tokens"].numpy()
    for ids, _ in requests:
        n, length = ids.shape
        answers.append({"pooled": pooled[start : start + n],
                        "tokens": tokens[start : start + n, :length]})  # fmt: skip
        start += n
    return answers


def forward_padded(module: torch.nn.Module, requests: Sequence[Sentences]) -> list[Answer]:
    """One forward pass over the requests padded to the longest of them (``handled``)."""
    ids, mask = pad_batch(requests)
    with torch.inference_mode():
        return split(module(ids, mask), requests)


def forward_concatenated(module: torch.nn.Module, requests: Sequence[Sentences]) -> list[Answer]:
    """The fixed-shape servers' way (``as-is``): ids and masks concatenated as they
    are; numpy refuses when two lengths differ."""
    ids = np.concatenate([i for i, _ in requests])
    mask = np.concatenate([m for _, m in requests])
    with torch.inference_mode():
        return split(module(torch.from_numpy(ids), torch.from_numpy(mask)), requests)
