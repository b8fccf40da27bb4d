"""What the runtime benchmark sends: each model's requests, and their OIP bodies.

Fixed-shape models (the example MLP and CNN, the zoo's ResNet) get ``count``
distinct standard-normal inputs, one row each, sent in turn. The zoo's BERT
gets ``count`` sentences whose token counts follow ``sentence_lengths`` (a
fixed, seeded list), each request one sentence (``ids`` and a ``mask`` of ones,
both INT64 [rows, length]). The load generator cycles through the same list
and the ceiling is measured on it (``bench/ceiling.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelfleet.api.request_parameters import HEADER_LENGTH
from modelfleet.runtime.protocol import NP_DTYPES

Inputs = tuple[np.ndarray, ...]
"""One request's input arrays, in the model's declared input order."""

LENGTH_MEDIAN = 24
LENGTH_SIGMA = 0.6
LENGTH_MIN, LENGTH_MAX = 8, 128
VOCAB = 1000
"""The zoo BERT's vocabulary (``modelfleet.runtime.zoo.bert``): ids are drawn below it."""


def sentence_lengths(
    count: int,
    seed: int = 0,
    *,
    median: float = LENGTH_MEDIAN,
    sigma: float = LENGTH_SIGMA,
    low: int = LENGTH_MIN,
    high: int = LENGTH_MAX,
) -> np.ndarray:
    """``count`` sentence lengths in tokens: a log-normal of median ``median`` and
    shape ``sigma`` (natural log), rounded and clipped to ``[low, high]``, seeded.

    With the defaults (median 24, sigma 0.6, 8..128) it is skewed short like
    sentences of English text: about a quarter fit 16 tokens, two thirds 32, 95%
    64, and a tail reaches 128 (the zoo BERT's longest input)."""
    if count < 1:
        raise ValueError(f"{count} sentences: at least one is needed")
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(np.log(median), sigma, count)
    return np.clip(np.rint(raw), low, high).astype(np.int64)


def sentences(count: int, rows: int = 1, seed: int = 0) -> list[Inputs]:
    """``count`` BERT requests of ``rows`` sentences each, the ``i``-th of length
    ``sentence_lengths(count, seed)[i]``: ``ids`` uniform in 1..VOCAB-1, ``mask``
    all ones (no padding inside a request: its rows have the same length)."""
    rng = np.random.default_rng(seed + 1)
    out: list[Inputs] = []
    for length in sentence_lengths(count, seed):
        ids = rng.integers(1, VOCAB, size=(rows, int(length)), dtype=np.int64)
        out.append((ids, np.ones_like(ids)))
    return out


def dense(shape: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct standard-normal FP32 rows of ``shape`` (seeded)."""
    if count < 1:
        raise ValueError(f"{count} distinct inputs: at least one is needed")
    rng = np.random.default_rng(seed)
    return rng.standard_normal([count, *shape]).astype(np.float32)


def encode(
    specs: Sequence[Mapping[str, Any]],
    arrays: Sequence[np.ndarray],
    encoding: str,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request carrying ``arrays`` as the inputs ``specs`` declare, and
    ``parameters`` as the request's (Triton's ``priority``, ``timeout``).

    ``json``: every tensor in ``data``. ``binary``: Triton's binary tensor
    extension both ways, as ``tritonclient.http`` sends it when no outputs are
    named (tensors after the JSON header, ``binary_data_output`` asked for)."""
    if encoding not in ("json", "binary"):
        raise ValueError(f"encoding {encoding!r}: json or binary")
    if len(specs) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(specs)} inputs")
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, x in zip(specs, arrays, strict=True):
        x = np.ascontiguousarray(x, dtype=NP_DTYPES[spec["datatype"]])
        entry: dict[str, Any] = {"name": spec["name"], "shape": list(x.shape),
                                 "datatype": spec["datatype"]}  # fmt: skip
        if encoding == "json":
            entry["data"] = x.reshape(-1).tolist()
        else:
            raw = x.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        entries.append(entry)
    if encoding == "json":
        request: dict[str, Any] = {"inputs": entries}
        if parameters:
            request["parameters"] = dict(parameters)
        return json.dumps(request).encode(), {"Content-Type": "application/json"}
    request = {"inputs": entries, "parameters": {**(parameters or {}), "binary_data_output": True}}
    head = json.dumps(request).encode()
    headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
    return b"".join([head, *blobs]), headers


def decode_response(body: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The output tensors of an OIP infer response, JSON or binary, by name."""
    length = headers.get(HEADER_LENGTH)
    split = int(length) if length is not None else len(body)
    doc = json.loads(body[:split])
    offset = split
    out = {}
    for entry in doc["outputs"]:
        dtype = NP_DTYPES[entry["datatype"]]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.array(entry["data"], dtype=dtype)
        else:
            array = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        out[entry["name"]] = array.reshape(entry["shape"])
    return out
