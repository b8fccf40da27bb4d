"""Architectures used by the runtime tests (importable as ``tests.runtime.models:...``)."""

from __future__ import annotations

import gc
import os
import threading
import time

import torch
from torch import nn

FORWARD_BATCHES: list[int] = []
"""Batch sizes seen by ``recorder`` models, in order (tests reset it)."""
_lock = threading.Lock()


class Slow(nn.Module):
    """Doubles its input after sleeping: makes queues fill up and deadlines pass."""

    def __init__(self, delay_ms: float) -> None:
        super().__init__()
        self.delay_s = delay_ms / 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x * 2


class Recorder(nn.Module):
    """Identity that records each batch size it runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _lock:
            FORWARD_BATCHES.append(int(x.shape[0]))
        return x


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model always fails")


def slow(delay_ms: float = 50) -> nn.Module:
    return Slow(delay_ms)


def recorder() -> nn.Module:
    return Recorder()


def identity() -> nn.Module:
    return Identity()


def broken() -> nn.Module:
    return Broken()


class SequenceSum(nn.Module):
    """Token ids ``ids`` INT64 [B, L] -> per-row sum FP32 [B, 1] and the ids as
    floats FP32 [B, L] (``tokens``): exact arithmetic, any length."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = ids.to(torch.float32)
        return tokens.sum(1, keepdim=True), tokens


def sequence_sum() -> nn.Module:
    return SequenceSum()


class LengthBaked(nn.Module):
    """Adds its input's length as a Python int: a trace turns it into a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + int(x.shape[1])


def length_baked() -> nn.Module:
    return LengthBaked()


class Reverse(nn.Module):
    """Reverses the last dimension: a different arg-max for a shadow to disagree on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


def reverse() -> nn.Module:
    return Reverse()


class Cyclic(nn.Module):
    """Identity that holds a reference cycle (only the cyclic collector frees it)."""

    def __init__(self) -> None:
        super().__init__()
        self.itself = [self]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def cyclic() -> nn.Module:
    return Cyclic()


class FreezeProbe(nn.Module):
    """Answers, in every element, how many objects its process holds frozen out of the
    cyclic collector (``gc.get_freeze_count``); a positive first input runs a full
    collection first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() and float(x.reshape(-1)[0]) > 0:
            gc.collect()
        return torch.full_like(x, float(gc.get_freeze_count()))


def freeze_probe() -> nn.Module:
    return FreezeProbe()


class NiceProbe(nn.Module):
    """Answers, in every element, the CPU priority (nice) of the thread that runs it
    (Linux: ``getpriority`` of thread 0 is the calling thread's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float(os.getpriority(os.PRIO_PROCESS, 0)))


def nice_probe() -> nn.Module:
    return NiceProbe()
