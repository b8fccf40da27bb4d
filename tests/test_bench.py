"""The benchmark's ceiling: what every served ratio is divided by."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.runtime_bench import raw_forward, request_body


def test_the_ceiling_covers_every_batch_size_up_to_32_whatever_the_served_maximum(
    model_store: Path,
) -> None:
    by_bs = raw_forward(model_store, "cnn", seconds=0.01, rounds=1)
    assert list(by_bs) == [1, 2, 4, 8, 16, 32]
    assert all(rate > 0 for rate in by_bs.values())


def test_a_request_can_carry_several_rows_in_either_encoding() -> None:
    for encoding in ("json", "binary"):
        body, headers, x = request_body("cnn", encoding, np.random.default_rng(0), rows=16)
        assert x.shape == (16, 1, 28, 28)
        head = body[: int(headers.get("Inference-Header-Content-Length", len(body)))]
        entry = json.loads(head)["inputs"][0]
        assert entry["shape"] == [16, 1, 28, 28]
        if encoding == "binary":
            assert body[len(head) :] == x.tobytes()
        else:
            assert entry["data"] == x.reshape(-1).tolist()
