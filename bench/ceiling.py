"""The raw forward pass that every served figure is divided by, measured in
short windows between the served windows (paired measurement).

This host's speed drifts by a factor of up to 1.7 within seconds (the same
one-second forward loop on CPU 0 measured 1,885 and 3,290 rows/s ten seconds
apart), so a ceiling measured once before and once after a sweep says little
about the seconds in between. Instead each served window sits between two
ceiling windows of the same model, and its ratio is taken against their mean:
a slow or fast spell of the host moves both sides of that ratio together.

Variable-length traffic (the zoo's BERT) is measured as an ideal batcher would
run it: the request list grouped as the runtime groups it (with
``batching.pad``: by bucket, each request padded to its bucket; without: by
exact shape), full batches of one group at a time, every group in turn. Each
group's seconds per row are timed separately and weighted by its share of the
traffic's rows (``mix_rate``), so a window that happened to run more long
batches than the traffic holds is not slower for it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelfleet.runtime.config import ModelConfig, Padding, ServerConfig

Inputs = tuple[torch.Tensor, ...]
"""One batch's (or request's) input tensors, in the model's declared order."""

BATCH_BYTES = 64 << 20
"""Materialized batches per batch size stay under this (the ResNet's 224x224
images are 600 KB a row): fewer distinct batches, each row still in turn."""


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


def _args(batch: torch.Tensor | Inputs) -> Inputs:
    return batch if isinstance(batch, tuple) else (batch,)


@dataclass
class Sample:
    """Forward passes timed per group: seconds and rows, and where to go on from."""

    seconds: dict[Hashable, float] = field(default_factory=dict)
    rows: dict[Hashable, int] = field(default_factory=dict)
    passes: dict[Hashable, int] = field(default_factory=dict)
    next: int = 0

    def add(self, group: Hashable, seconds: float, rows: int) -> None:
        self.seconds[group] = self.seconds.get(group, 0.0) + seconds
        self.rows[group] = self.rows.get(group, 0) + rows
        self.passes[group] = self.passes.get(group, 0) + 1

    def batch_seconds(self, group: Hashable) -> float:
        """The mean time of one forward pass of ``group``."""
        return self.seconds[group] / self.passes[group]


def timed_passes(
    module: torch.nn.Module,
    batches: Sequence[torch.Tensor | Inputs],
    seconds: float,
    *,
    groups: Sequence[Hashable] | None = None,
    start: int = 0,
    warmup: int = 2,
) -> Sample:
    """Forward passes back to back on ``batches`` in turn from ``start`` (after
    ``warmup`` untimed ones on the first batches from there) for ``seconds``, and
    on until every group of ``groups`` (one per batch) has been timed once."""
    n = len(batches)
    keys: Sequence[Hashable] = groups if groups is not None else [None] * n
    missing = set(keys)
    sample = Sample()
    with torch.inference_mode():
        for k in range(warmup):
            module(*_args(batches[(start + k) % n]))
        i, begin = start % n, time.perf_counter()
        now = begin
        while now - begin < seconds or missing:
            x = _args(batches[i])
            t0 = time.perf_counter()
            module(*x)
            now = time.perf_counter()
            sample.add(keys[i], now - t0, x[0].shape[0])
            missing.discard(keys[i])
            i = (i + 1) % n
    sample.next = i
    return sample


def mix_rate(sample: Sample, weights: Mapping[Hashable, float] | None = None) -> float:
    """Rows per second of a traffic whose rows fall in the groups by ``weights``
    (shares summing to 1): one over the weighted mean of each group's measured
    seconds per row. Without weights, all the rows over all the time."""
    if weights is None:
        total = sum(sample.seconds.values())
        return sum(sample.rows.values()) / total if total > 0 else 0.0
    per_row = sum(w * sample.seconds[g] / sample.rows[g] for g, w in weights.items())
    return 1 / per_row if per_row > 0 else 0.0


def rows_per_second(
    module: torch.nn.Module, batches: Sequence[torch.Tensor | Inputs], seconds: float
) -> float:
    """Forward passes back to back for ``seconds``, each on the next of
    ``batches`` in turn (after 2 untimed ones)."""
    return mix_rate(timed_passes(module, batches, seconds))


def batches_of(images: torch.Tensor, bs: int, count: int | None = None) -> list[torch.Tensor]:
    """``count`` (default: one per image) batches of ``bs`` consecutive images of
    ``images``, wrapping around: the batches a stream of requests cycling
    through ``images`` one image at a time would form."""
    n = images.shape[0]
    index = torch.arange((count or n) * bs) % n
    return list(images[index].reshape(-1, bs, *images.shape[1:]))


def batch_count(rows: int, bs: int, row_bytes: int, budget: int = BATCH_BYTES) -> int:
    """How many batches of ``bs`` to build from a pool of ``rows`` rows: one per row
    (each row then appears ``bs`` times), fewer when that passes ``budget`` bytes,
    never fewer than it takes to use every row once."""
    fits = budget // max(1, bs * row_bytes)
    return max(math.ceil(rows / bs), min(rows, fits), 1)


def group_of(inputs: Inputs, pad: Padding | None) -> Hashable:
    """The batch group of one request as the runtime forms them: with ``pad``, the
    bucket of its length along ``pad.axis`` (of the first padded input); without,
    the shapes of its inputs past dim 0."""
    if pad is None:
        return tuple(tuple(x.shape[1:]) for x in inputs)
    return pad.bucket(int(inputs[0].shape[pad.axis]))


def padded(inputs: Inputs, config: ModelConfig, bucket: int) -> Inputs:
    """``inputs`` with the inputs named in ``batching.pad`` padded at the end of
    ``pad.axis`` to ``bucket`` with their padding value, as the runtime pads."""
    pad = config.batching.pad
    assert pad is not None
    out = []
    for spec, x in zip(config.inputs, inputs, strict=True):
        value = pad.inputs.get(spec.name)
        if value is None or x.shape[pad.axis] == bucket:
            out.append(x)
            continue
        shape = list(x.shape)
        shape[pad.axis] = bucket - x.shape[pad.axis]
        out.append(torch.cat([x, torch.full(shape, value, dtype=x.dtype)], dim=pad.axis))
    return tuple(out)


def padding_overhead(config: ModelConfig, requests: Sequence[Inputs]) -> float:
    """Positions computed over real ones along the padded axis when every request
    is padded to its bucket (1.0 without ``batching.pad``)."""
    pad = config.batching.pad
    if pad is None:
        return 1.0
    real = sum(x[0].shape[0] * x[0].shape[pad.axis] for x in requests)
    computed = sum(x[0].shape[0] * (pad.bucket(x[0].shape[pad.axis]) or 0) for x in requests)
    return computed / real


class Ceiling:
    """One model's raw forward pass, loaded once, measured on ``cpu`` with one
    torch thread. ``modules`` are the candidates (as served, and eager): the
    faster one at each batch size is the ceiling.

    Fixed-shape models: the forward passes cycle through ``images`` (dim 0: one
    input row each), the same rows the load generator sends: this CNN's speed
    depends on its data (max pooling branches on it, and a repeated input trains
    the CPU's branch predictor), so a ceiling measured on one repeated input is
    not the ceiling of the traffic served. One image (``images`` of length 1) is
    the old, repeated-input benchmark.

    Variable-length models: ``requests`` is the request list the load generator
    cycles through (each request's input tensors). They are grouped as the
    runtime groups them (by bucket with ``batching.pad``, padded to it; by exact
    shape without, or with ``pad=False``); a batch of ``bs`` holds consecutive
    rows of one group, and the groups take turns. The rate is ``mix_rate`` with
    each group weighted by its share of the requests' rows.
    """

    def __init__(
        self,
        config: ModelConfig,
        modules: Sequence[torch.nn.Module],
        cpu: int = 0,
        images: torch.Tensor | None = None,
        requests: Sequence[Inputs] | None = None,
        *,
        pad: bool = True,
        warmup: int = 2,
    ) -> None:
        self.config = config
        self.modules = list(modules)
        self.cpu = cpu
        self.warmup = warmup
        self.images: torch.Tensor | None = None
        self.pools: dict[Hashable, Inputs] = {}
        """Per group, the rows of its requests (padded), concatenated."""
        self.request_groups: list[Hashable] = []
        """The group of each request, in order (one per image for fixed shapes)."""
        if requests is None:
            self.shape = [d if d > 0 else 1 for d in config.inputs[0].shape[1:]]
            if images is None:
                images = torch.randn(64, *self.shape, generator=torch.Generator().manual_seed(0))
            if list(images.shape[1:]) != self.shape or images.shape[0] < 1:
                raise ValueError(f"ceiling images of shape {list(images.shape)}, "
                                 f"expected [N >= 1, {', '.join(map(str, self.shape))}]")  # fmt: skip
            self.images = images
            self.pools[None] = (images,)
            self.request_groups = [None] * images.shape[0]
        else:
            if not requests:
                raise ValueError("the ceiling needs at least one request")
            spec = config.batching.pad if pad else None
            parts: dict[Hashable, list[Inputs]] = {}
            for inputs in requests:
                group = group_of(inputs, spec)
                if group is None:
                    raise ValueError(f"a request of shape {list(inputs[0].shape)} fits no bucket")
                if isinstance(group, int):  # a bucket: pad to it
                    inputs = padded(inputs, config, group)
                self.request_groups.append(group)
                parts.setdefault(group, []).append(inputs)
            for group, members in parts.items():
                self.pools[group] = tuple(
                    torch.cat([m[i] for m in members]) for i in range(len(config.inputs))
                )
        rows = {g: pool[0].shape[0] for g, pool in self.pools.items()}
        total = sum(rows.values())
        self.weights: dict[Hashable, float] = {g: r / total for g, r in rows.items()}
        """Each group's share of the traffic's rows."""
        self._batches: dict[int, tuple[list[Inputs], list[Hashable]]] = {}
        self._next: dict[int, int] = {}
        self.best_module: dict[int, int] = {}
        self.by_batch: dict[int, float] = {}
        """The last sweep's rows/s per batch size."""
        self.longest_pass_ms: dict[int, float] = {}
        """The last sweep's median time of one forward pass per batch size, of the
        slowest group (fixed shapes: the only one)."""
        self.padding: dict[str, Any] | None = None
        """What padding costs on this traffic, where the bench measured it."""

    @property
    def best_batch(self) -> int:
        """The batch size with the highest rows/s in the last sweep."""
        return max(self.by_batch, key=self.by_batch.__getitem__)

    def _built(self, bs: int) -> tuple[list[Inputs], list[Hashable]]:
        if bs not in self._batches:
            per_group = []
            for group, pool in self.pools.items():
                n = pool[0].shape[0]
                row_bytes = sum(x[0].numel() * x.element_size() for x in pool)
                count = batch_count(n, bs, row_bytes)
                split = [batches_of(x, bs, count) for x in pool]
                per_group.append((group, list(zip(*split, strict=True))))
            longest = max(len(b) for _, b in per_group)
            batches, groups = [], []
            for i in range(longest):  # the groups take turns
                for group, own in per_group:
                    batches.append(own[i % len(own)])
                    groups.append(group)
            self._batches[bs] = (batches, groups)
        return self._batches[bs]

    def batches(self, bs: int) -> list[Inputs]:
        """The inputs measured at batch size ``bs`` (built once)."""
        return self._built(bs)[0]

    def batch_groups(self, bs: int) -> list[Hashable]:
        """The group of each of ``batches(bs)``."""
        return self._built(bs)[1]

    def measure(self, bs: int, seconds: float, module: int | None = None) -> Sample:
        """Forward passes at batch size ``bs`` for ``seconds`` (every group at least
        once), on from where the last measurement at ``bs`` stopped; pinned to the
        ceiling's CPU with one torch thread. ``module``: by default the sweep's winner."""
        batches, groups = self._built(bs)
        chosen = self.modules[self.best_module.get(bs, 0) if module is None else module]
        previous = pinned(self.cpu)
        try:
            torch.set_num_threads(1)
            sample = timed_passes(chosen, batches, seconds, groups=groups,
                                  start=self._next.get(bs, 0), warmup=self.warmup)  # fmt: skip
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)
        self._next[bs] = sample.next
        return sample

    def rate(self, sample: Sample) -> float:
        """Rows/s of the traffic (each group at its share) from a measurement."""
        return mix_rate(sample, self.weights if len(self.weights) > 1 else None)

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
        passes: dict[tuple[int, int, Hashable], list[float]] = {}
        for _ in range(rounds):
            for m in range(len(self.modules)):
                for bs in sizes:
                    sample = self.measure(bs, seconds, module=m)
                    samples.setdefault((m, bs), []).append(self.rate(sample))
                    for g in sample.passes:
                        passes.setdefault((m, bs, g), []).append(sample.batch_seconds(g))
        out = {}
        for bs in sizes:
            medians = [statistics.median(samples[m, bs]) for m in range(len(self.modules))]
            best = self.best_module[bs] = max(range(len(medians)), key=medians.__getitem__)
            out[bs] = medians[best]
            self.longest_pass_ms[bs] = 1000 * max(
                statistics.median(passes[best, bs, g]) for g in self.pools
            )
        self.by_batch = out
        return out

    def within(self, pass_ms: float) -> tuple[int, float] | None:
        """The best batch size of the last sweep whose longest forward pass (the
        slowest group's median) takes at most ``pass_ms``, and its rows/s."""
        fits = [bs for bs in self.by_batch if self.longest_pass_ms[bs] <= pass_ms]
        if not fits:
            return None
        bs = max(fits, key=self.by_batch.__getitem__)
        return bs, self.by_batch[bs]

    def window(self, bs: int, seconds: float = 0.25) -> float:
        """One short measurement at batch size ``bs`` (the module that won the sweep)."""
        return self.rate(self.measure(bs, seconds))

    def request_ms(self, sample: Sample) -> float:
        """The median over the request list of one forward pass of a request alone,
        in ms, from a measurement at the requests' own batch size: each request
        counts its group's mean time per pass (fixed shapes: one group, the mean)."""
        return 1000 * statistics.median(sample.batch_seconds(g) for g in self.request_groups)

    def request_mean_ms(self, sample: Sample) -> float:
        """As ``request_ms``, the mean over the request list (what a forward-time
        metric summed over the same requests would give)."""
        return 1000 * statistics.mean(sample.batch_seconds(g) for g in self.request_groups)


def load_ceiling(
    config: ModelConfig,
    store: Path,
    cpu: int = 0,
    images: torch.Tensor | None = None,
    retain_mb: int | None = None,
    requests: Sequence[Inputs] | None = None,
    *,
    warmup: int = 2,
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
    return Ceiling(config, modules, cpu, images, requests, warmup=warmup)
