"""One forward pass of a module, numpy in and numpy out.

Both executors run it: the device thread (``executor: thread``) and the
forward process (``executor: process``). It knows nothing of queues or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelfleet.runtime.config import TensorSpec
from modelfleet.runtime.errors import ModelFailure
from modelfleet.runtime.protocol import NP_DTYPES, Array


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def forward(
    module: torch.nn.Module,
    arrays: Sequence[Array],
    outputs: Sequence[TensorSpec],
    device: torch.device,
) -> list[Array]:
    """One forward pass: numpy in, numpy out, shaped and typed as declared.

    BYTES inputs reach the module as they are (numpy arrays of ``bytes``)."""
    with torch.inference_mode():
        tensors = [
            a if a.dtype.kind == "O" else torch.from_numpy(a).to(device, non_blocking=True)
            for a in arrays
        ]
        result: Any = module(*tensors)
        if isinstance(result, torch.Tensor):
            produced = [result]
        elif isinstance(result, dict):
            produced = [result[spec.name] for spec in outputs]
        else:
            produced = list(result)
        if len(produced) != len(outputs):
            raise ModelFailure(
                f"the model returned {len(produced)} outputs, its config declares {len(outputs)}"
            )
        return [
            _bytes_output(t, spec.name)
            if spec.datatype == "BYTES"
            else t.detach().to("cpu").numpy().astype(NP_DTYPES[spec.datatype], copy=False)
            for t, spec in zip(produced, outputs, strict=True)
        ]


def _bytes_output(value: Any, name: str) -> Array:
    """A BYTES output (an array or nested list of ``bytes``/``str``) as an object array."""
    if isinstance(value, torch.Tensor):
        raise ModelFailure(f"output '{name}' is declared BYTES but the model returned a tensor")
    array = np.array(value, dtype=object)
    flat = array.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            flat[i] = item.encode()
        elif not isinstance(item, bytes | bytearray):
            raise ModelFailure(
                f"output '{name}' is declared BYTES but holds {type(item).__name__} values"
            )
    return array
