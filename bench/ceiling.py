"""The raw forward pass that every served figure is divided by, measured in
short windows between the served windows (paired measurement).

This host's speed drifts by a factor of up to 1.7 within seconds (the same
one-second forward loop on CPU 0 measured 1,885 and 3,290 rows/s ten seconds
apart), so a ceiling measured once before and once after a sweep says little
about the seconds in between. Instead each served window sits between two
ceiling windows of the same model, and its ratio is taken against their mean:
a slow or fast spell of the host moves both sides of that ratio together.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from modelfleet.runtime.config import ModelConfig, ServerConfig


def paired_ratios(served: Sequence[float], ceilings: Sequence[float]) -> list[float]:
    """Each served rate over the mean of the ceiling windows on either side of it.

    ``served[i]`` was measured between ``ceilings[i]`` and ``ceilings[i + 1]``.
    """
    if len(ceilings) != len(served) + 1:
        raise ValueError(
            f"{len(served)} served windows need {len(served) + 1} ceiling windows "
            f"around them, got {len(ceilings)}"
        )
    if any(c <= 0 for c in ceilings):
        raise ValueError(f"a ceiling window measured no rows: {list(ceilings)}")
    return [s / ((a + b) / 2) for s, a, b in zip(served, ceilings, ceilings[1:], strict=False)]


def pinned(cpu: int) -> set[int] | None:
    """Pins this process to ``cpu`` (where it exists); returns the previous set."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) <= cpu:
        return None
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return previous


def rows_per_second(
    module: torch.nn.Module, batches: Sequence[torch.Tensor], seconds: float
) -> float:
    """Forward passes back to back for ``seconds``, each on the next of
    ``batches`` in turn (after 2 untimed ones)."""
    with torch.inference_mode():
        for x in batches[:2]:
            module(x)
        n, rows, t0 = 0, 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            x = batches[n % len(batches)]
            module(x)
            n += 1
            rows += x.shape[0]
    return rows / elapsed


def batches_of(images: torch.Tensor, bs: int, count: int | None = None) -> list[torch.Tensor]:
    """``count`` (default: one per image) batches of ``bs`` consecutive images of
    ``images``, wrapping around: the batches a stream of requests cycling
    through ``images`` one image at a time would form."""
    n = images.shape[0]
    index = torch.arange((count or n) * bs) % n
    return list(images[index].reshape(-1, bs, *images.shape[1:]))


class Ceiling:
    """One model's raw forward pass, loaded once, measured on ``cpu`` with one
    torch thread. ``modules`` are the candidates (as served, and eager): the
    faster one at each batch size is the ceiling.

    The forward passes cycle through ``images`` (dim 0: one input row each), the
    same rows the load generator sends: this CNN's speed depends on its data
    (max pooling branches on it, and a repeated input trains the CPU's branch
    predictor), so a ceiling measured on one repeated input is not the ceiling
    of the traffic served. One image (``images`` of length 1) is the old,
    repeated-input benchmark.
    """

    def __init__(
        self,
        config: ModelConfig,
        modules: Sequence[torch.nn.Module],
        cpu: int = 0,
        images: torch.Tensor | None = None,
    ) -> None:
        self.config = config
        self.modules = list(modules)
        self.cpu = cpu
        self.shape = [d if d > 0 else 1 for d in config.inputs[0].shape[1:]]
        if images is None:
            images = torch.randn(64, *self.shape, generator=torch.Generator().manual_seed(0))
        if list(images.shape[1:]) != self.shape or images.shape[0] < 1:
            raise ValueError(f"ceiling images of shape {list(images.shape)}, "
                             f"expected [N >= 1, {', '.join(map(str, self.shape))}]")  # fmt: skip
        self.images = images
        self._batches: dict[int, list[torch.Tensor]] = {}
        self.best_module: dict[int, int] = {}
        self.by_batch: dict[int, float] = {}
        """The last sweep's rows/s per batch size."""

    @property
    def best_batch(self) -> int:
        """The batch size with the highest rows/s in the last sweep."""
        return max(self.by_batch, key=self.by_batch.__getitem__)

    def batches(self, bs: int) -> list[torch.Tensor]:
        """The inputs measured at batch size ``bs`` (built once)."""
        if bs not in self._batches:
            self._batches[bs] = batches_of(self.images, bs)
        return self._batches[bs]

    def sweep(
        self, sizes: Sequence[int], seconds: float = 0.05, rounds: int = 20
    ) -> dict[int, float]:
        """Rows/s per batch size: the median of ``rounds`` short runs interleaved
        across sizes and modules; the faster module counts (and is remembered
        for the windows).

        Many short runs rather than a few long ones: the host's speed swings
        within a second, and a 5 x 0.25 s sweep once ranked batch 32 first
        (3,140 rows/s), whose windows then measured 1,385-1,979 rows/s, two
        thirds of batch 16's speed in a sweep of 30 x 0.05 s runs.
        """
        samples: dict[tuple[int, int], list[float]] = {}
        previous = pinned(self.cpu)
        try:
            torch.set_num_threads(1)
            for _ in range(rounds):
                for m, module in enumerate(self.modules):
                    for bs in sizes:
                        rate = rows_per_second(module, self.batches(bs), seconds)
                        samples.setdefault((m, bs), []).append(rate)
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)
        out = {}
        for bs in sizes:
            medians = [statistics.median(samples[m, bs]) for m in range(len(self.modules))]
            self.best_module[bs] = max(range(len(medians)), key=medians.__getitem__)
            out[bs] = medians[self.best_module[bs]]
        self.by_batch = out
        return out

    def window(self, bs: int, seconds: float = 0.25) -> float:
        """One short measurement at batch size ``bs`` (the module that won the sweep)."""
        module = self.modules[self.best_module.get(bs, 0)]
        previous = pinned(self.cpu)
        try:
            torch.set_num_threads(1)
            return rows_per_second(module, self.batches(bs), seconds)
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)


def load_ceiling(
    config: ModelConfig,
    store: Path,
    cpu: int = 0,
    images: torch.Tensor | None = None,
    retain_mb: int | None = None,
) -> Ceiling:
    """The model as served and its eager form, both loaded from ``store``; this
    process then keeps its freed memory as the runtime does (``malloc``;
    ``retain_mb`` as the runtime's ``retain_freed_memory_mb``, default its
    default), so the ceiling pays the page faults the runtime pays, no more."""
    from modelfleet.runtime.loader import load_module
    from modelfleet.runtime.malloc import retain_freed_memory

    retain_freed_memory(ServerConfig().retain_freed_memory_mb if retain_mb is None else retain_mb)

    eager = config.model_copy(update={"optimize": "none"})
    variants = {config.optimize: config, "none": eager}.values()
    modules = [load_module(c, store, torch.device("cpu")) for c in variants]
    return Ceiling(config, modules, cpu, images)
