"""A fake device allocator, and architectures that allocate on it (importable as
``tests.runtime.fakemem:...``), so the runtime's memory accounting runs without CUDA.

``FAKE`` behaves like CUDA's caching allocator as far as the runtime reads it:
allocated bytes follow live "tensors", reserved bytes keep the freed blocks
until ``empty_cache``, and the peak is the most allocated since ``reset_peak``.
A ``hungry`` module holds its weights on it for as long as the module lives
(freed when it is garbage collected) and allocates ``per_row_mb`` per row of a
batch while its forward pass runs; a ``leaky`` one never gives its weights back.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

MiB = 1024 * 1024


class FakeDeviceMemory:
    """``devicemem.DeviceMemory`` for tests: bytes move only when told to."""

    measured = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.generation = getattr(self, "generation", 0) + 1
            self._allocated = 0
            self._reserved = 0
            self._peak = 0
            self.empty_cache_calls = 0

    def allocate(self, size: int) -> None:
        with self._lock:
            self._allocated += size
            self._reserved = max(self._reserved, self._allocated)
            self._peak = max(self._peak, self._allocated)

    def free(self, size: int, generation: int | None = None) -> None:
        """Frees ``size`` bytes (allocated since ``generation``'s reset: a module of an
        earlier test collected late frees nothing)."""
        with self._lock:
            if generation is None or generation == self.generation:
                self._allocated -= size  # the block stays reserved (cached) until empty_cache

    def allocated(self) -> int | None:
        with self._lock:
            return self._allocated

    def reserved(self) -> int | None:
        with self._lock:
            return self._reserved

    def peak_allocated(self) -> int | None:
        with self._lock:
            return self._peak

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._allocated

    def empty_cache(self) -> None:
        with self._lock:
            self._reserved = self._allocated
            self.empty_cache_calls += 1


FAKE = FakeDeviceMemory()
"""The fake device every architecture below allocates on (tests reset it)."""

KEPT: list[nn.Module] = []
"""Modules that leak: referenced here for ever (tests clear it)."""


class Hungry(nn.Module):
    """Identity that holds ``weights_mb`` on the fake device while it lives and needs
    ``per_row_mb`` per row during a forward pass; a batch of more than ``oom_above``
    rows raises CUDA's out-of-memory error (0: never)."""

    def __init__(self, weights_mb: float, per_row_mb: float, oom_above: int) -> None:
        super().__init__()
        self.per_row = int(per_row_mb * MiB)
        self.oom_above = oom_above
        weights = int(weights_mb * MiB)
        FAKE.allocate(weights)
        weakref.finalize(self, FAKE.free, weights, FAKE.generation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = int(x.shape[0])
        if self.oom_above and rows > self.oom_above:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {rows * self.per_row} bytes"
            )
        FAKE.allocate(rows * self.per_row)
        try:
            return x * 1
        finally:
            FAKE.free(rows * self.per_row)


def hungry(weights_mb: float = 8, per_row_mb: float = 1, oom_above: int = 0) -> nn.Module:
    return Hungry(weights_mb, per_row_mb, oom_above)


def leaky(weights_mb: float = 8, per_row_mb: float = 1) -> nn.Module:
    module = Hungry(weights_mb, per_row_mb, 0)
    KEPT.append(module)
    return module


class Weighted(nn.Module):
    """Identity whose weights are ``mb`` MiB of real (CPU) tensors, not in its state
    dict: loads from ``empty.safetensors``, and ``module_bytes`` counts them."""

    def __init__(self, mb: float) -> None:
        super().__init__()
        self.register_buffer("weights", torch.zeros(int(mb * MiB), dtype=torch.uint8),
                             persistent=False)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1


def weighted(mb: float = 1) -> nn.Module:
    return Weighted(mb)


TOGETHER = threading.Barrier(2, timeout=10)
"""``together`` modules wait here for each other while they are built (tests replace it)."""


def together(mb: float = 1) -> nn.Module:
    """A ``weighted`` module that is only built once another one is being built too:
    two loads succeed only when they run at the same time."""
    TOGETHER.wait()
    return Weighted(mb)
