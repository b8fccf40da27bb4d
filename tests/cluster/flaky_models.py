"""Architectures the cluster tests' runtimes load (``tests.cluster.flaky_models:...``).

A model's ``source.architecture`` can name a module of the tests, as
``tests.runtime.models:broken`` does: the pools' containers run from the runtime image
plus these modules (``models_image.py``), and processes (``MODELFLEET_CLUSTER_PODS=processes``)
with the clone's root on PYTHONPATH (tests/support/servers.py ``ENV``).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from modelfleet.runtime.examples import mlp

MESSAGE = "flaky model: a negative first input value"
"""Part of the error a ``flaky_mlp`` request with a negative first value fails with."""


class FlakyMLP(nn.Sequential):
    """The example ``mlp`` (its weights files load, positive inputs get its answers)
    failing every forward pass whose batch holds a row with a negative first input
    value: a canary that is wrong on some inputs only. A failing pass fails the whole
    batch (as any model's exception does), so a test that wants exactly the negative
    requests to fail gives the model ``batching.maxBatchSize: 1``."""

    def __init__(self) -> None:
        super().__init__(*mlp().children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError(MESSAGE)
        for layer in self:
            x = layer(x)
        return x


def flaky_mlp() -> nn.Module:
    """``FlakyMLP``: input ``input`` FP32 [-1, 16] -> output ``output`` FP32 [-1, 4]."""
    return FlakyMLP()


def body(first: float) -> bytes:
    """An OIP request for the example MLP whose first input value is ``first`` (the
    others 0.25, as ``fleet.BODY``)."""
    data = [first] + [0.25] * 15
    return json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]}
    ).encode()
