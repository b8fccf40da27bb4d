"""The benchmark's ceiling: what every served ratio is divided by."""

from __future__ import annotations

from pathlib import Path

from bench.runtime_bench import raw_forward


def test_the_ceiling_covers_every_batch_size_up_to_32_whatever_the_served_maximum(
    model_store: Path,
) -> None:
    by_bs = raw_forward(model_store, "cnn", seconds=0.01, rounds=1)
    assert list(by_bs) == [1, 2, 4, 8, 16, 32]
    assert all(rate > 0 for rate in by_bs.values())
