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


def test_each_served_window_is_divided_by_the_mean_of_the_ceilings_beside_it() -> None:
    from bench.ceiling import paired_ratios

    # A host that halves its speed in the middle: the window measured then is judged
    # against the slow ceilings around it, not against the fast start.
    assert paired_ratios([800, 400, 800], [1000, 1000, 500, 1000]) == [0.8, 0.4 / 0.75, 0.8 / 0.75]


def test_paired_ratios_refuse_windows_without_a_ceiling_on_each_side() -> None:
    import pytest

    from bench.ceiling import paired_ratios

    with pytest.raises(ValueError, match="3 served windows need 4 ceiling windows"):
        paired_ratios([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="measured no rows"):
        paired_ratios([1], [0, 1])
