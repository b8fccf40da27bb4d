"""The example models that ``make run`` serves and the tests and benchmarks use."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn


def mlp(in_features: int = 16, hidden: int = 64, out_features: int = 4) -> nn.Module:
    """A tiny MLP: input ``input`` FP32 [-1, 16] -> output ``output`` FP32 [-1, 4]."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


class SlowMLP(nn.Sequential):
    """``mlp`` (the same weights files load, the same answers) sleeping ``delay_ms`` in
    every forward pass: a slower build of the same model, such as a canary analysis
    should catch on its latency."""

    def __init__(self, delay_ms: float) -> None:
        super().__init__(*mlp().children())
        self.delay_s = delay_ms / 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        for layer in self:
            x = layer(x)
        return x


def slow_mlp() -> nn.Module:
    """``mlp`` that sleeps 15 ms in every forward pass (``SlowMLP``)."""
    return SlowMLP(15.0)


class SmallCNN(nn.Module):
    """A LeNet-sized CNN: ``image`` FP32 [-1, 1, 28, 28] -> ``logits`` FP32 [-1, 10]."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels * 2 * 7 * 7, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))  # type: ignore[no-any-return]


def cnn(channels: int = 32) -> nn.Module:
    return SmallCNN(channels)


def write_state(path: Path, state: dict[str, torch.Tensor]) -> str:
    """Writes ``state`` as safetensors at ``path`` unless a file with the same
    tensor names and shapes is there; returns the line to print."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    wanted = {k: list(v.shape) for k, v in state.items()}
    if path.exists():
        with safe_open(str(path), "pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        if stored == wanted:
            return f"{path} (kept)"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return f"{path} (written)"


def write_examples(out: str | Path) -> list[str]:
    """Writes ``mlp.safetensors`` and ``cnn.safetensors`` (fixed seeds) unless an
    up-to-date copy is there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, factory in (("mlp", mlp), ("cnn", cnn)):
        torch.manual_seed(0)
        lines.append(write_state(out / f"{name}.safetensors", factory().state_dict()))
    return lines
