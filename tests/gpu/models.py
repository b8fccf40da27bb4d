"""Architectures for the GPU tests (importable as ``tests.gpu.models:...``)."""

from __future__ import annotations

import torch
from torch import nn

KEPT: list[nn.Module] = []
"""Modules that leak on purpose: referenced here for ever."""


class Wide(nn.Module):
    """Two ``width``-wide layers over a 4-wide input: megabytes of weights, and a
    working memory that grows with the batch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(4, width)
        self.mid = nn.Linear(width, width)
        self.down = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.mid(torch.relu(self.up(x)))))


class Greedy(nn.Module):
    """Asks for more device memory than any GPU has when a batch has more than
    ``above`` rows (a real CUDA out-of-memory error)."""

    def __init__(self, above: int) -> None:
        super().__init__()
        self.above = above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.above:
            torch.empty(1 << 46, dtype=torch.uint8, device=x.device)  # 64 TiB
        return x * 1


def wide(width: int = 2048) -> nn.Module:
    return Wide(width)


def leaky(width: int = 2048) -> nn.Module:
    module = Wide(width)
    KEPT.append(module)
    return module


def greedy(above: int = 2) -> nn.Module:
    return Greedy(above)
