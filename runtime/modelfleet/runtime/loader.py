"""Turns a model file into a ready torch module, safely.

Safetensors (plus an importable architecture) is the default. State dicts go
through ``torch.load(weights_only=True)``; torch.export archives through
``torch.export.load``; TorchScript only when the config marks it trusted.
Nothing is ever unpickled with ``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.errors import ModelLoadError

log = logging.getLogger("modelfleet.runtime")


def resolve_source(config: ModelConfig, store: str | Path) -> Path:
    path = Path(config.source)
    if not path.is_absolute():
        path = Path(store) / path
    if not path.is_file():
        raise ModelLoadError(f"model '{config.name}' version '{config.version}': {path} not found")
    return path


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise ModelLoadError(
            f"checksum mismatch for {path.name}: sha256 is {actual}, the config expects {expected}"
        )


def build_architecture(config: ModelConfig) -> torch.nn.Module:
    spec = config.architecture or ""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"architecture must look like 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import architecture {spec!r}: {exc}") from exc
    module = factory(**config.architecture_kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"architecture {spec!r} returned {type(module).__name__}, not a Module"
        )
    return module


def _load_state(module: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path.name} does not fit the architecture: {exc}") from exc


def load_module(config: ModelConfig, store: str | Path, device: torch.device) -> torch.nn.Module:
    """Loads, checks and moves the model to ``device``; raises ``ModelLoadError``."""
    path = resolve_source(config, store)
    if config.sha256:
        verify_sha256(path, config.sha256)
    fmt = config.resolved_format
    try:
        module: torch.nn.Module
        if fmt == "safetensors":
            from safetensors.torch import load_file

            module = build_architecture(config)
            _load_state(module, load_file(str(path)), path)
        elif fmt == "state_dict":
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ModelLoadError(f"{path.name} holds {type(state).__name__}, not a state dict")
            module = build_architecture(config)
            _load_state(module, state, path)
        elif fmt == "export":
            module = torch.export.load(str(path)).module()
        elif fmt == "torchscript":
            if not config.trusted:
                raise ModelLoadError(
                    f"model '{config.name}': TorchScript can run arbitrary code; "
                    "set 'trusted: true' to load it"
                )
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        else:  # pragma: no cover - the config validator forbids it
            raise ModelLoadError(f"unknown format {fmt!r}")
    except ModelLoadError:
        raise
    except Exception as exc:  # library errors: wrap with the file's name
        raise ModelLoadError(f"cannot load {path.name} as {fmt}: {exc}") from exc
    if fmt != "export":
        module.eval()
    module = module.to(device)
    if config.optimize != "none":
        module = trace(module, config, device)
    return module


TRACE_SHAPES = ((2, 8), (3, 5))
"""(batch, each variable dimension) of the example inputs: the module is traced on
the first and checked against the eager one on both, so that a trace that baked a
shape in (a length turned into a constant) is caught before it serves."""


def _examples(config: ModelConfig, device: torch.device, rows: int, size: int) -> tuple[Any, ...]:
    """Inputs of ``rows`` rows, ``size`` along every variable dimension: random floats,
    zeros for integers (token ids and masks: valid whatever the vocabulary)."""
    from modelfleet.runtime.protocol import NP_DTYPES

    generator = torch.Generator().manual_seed(rows * 1000 + size)
    examples = []
    for spec in config.inputs:
        shape = (rows, *(d if d > 0 else size for d in spec.shape[1:]))
        dtype = torch.from_numpy(np.zeros(0, dtype=NP_DTYPES[spec.datatype])).dtype
        if dtype.is_floating_point:
            examples.append(torch.randn(shape, generator=generator).to(device, dtype))
        else:
            examples.append(torch.zeros(shape, dtype=dtype, device=device))
    return tuple(examples)


def trace(module: torch.nn.Module, config: ModelConfig, device: torch.device) -> torch.nn.Module:
    """Traces and freezes the module (``optimize: inference``: and applies
    ``torch.jit.optimize_for_inference``), and checks it answers like the eager one
    at two batch sizes and, for variable dimensions, two sizes (``TRACE_SHAPES``)."""
    samples = [_examples(config, device, rows, size) for rows, size in TRACE_SHAPES]
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                module,
                samples[0],
                strict=False,  # strict=False: dict outputs
            )
            if config.optimize == "inference":  # freezes, folds, oneDNN kernels on CPU
                traced = torch.jit.optimize_for_inference(traced)
            else:
                traced = torch.jit.freeze(traced)
            answers = [(module(*x), traced(*x)) for x in samples]
    except Exception as exc:
        raise ModelLoadError(
            f"model '{config.name}': optimize: {config.optimize} failed: {exc}"
        ) from exc
    for (rows, size), (expected, got) in zip(TRACE_SHAPES, answers, strict=True):
        pairs = list(zip(_flat(expected), _flat(got), strict=False))
        if not all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
                   for a, b in pairs):  # fmt: skip
            where = f"{rows} rows" + (f", size {size} along the variable dimensions"
                                      if any(d < 0 for t in config.inputs for d in t.shape[1:])
                                      else "")  # fmt: skip
            raise ModelLoadError(
                f"model '{config.name}': the {config.optimize}-optimized module answers "
                f"differently from the eager one ({where}); use optimize: none"
            )
    return traced  # type: ignore[no-any-return]


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    return [t for v in value for t in _flat(v)]


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters and buffers: the memory a model holds at rest."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
