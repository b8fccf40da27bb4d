"""The runtime's desired-state document, as the runtime imports it.

The models live in the contracts package, :mod:`modelfleet.api.runtime_document`,
which the operator builds the document with; this module re-exports them so that
the runtime's modules (and their tests) keep one short import path.
"""

from __future__ import annotations

from modelfleet.api.runtime_document import (
    DATATYPES,
    Batching,
    Cache,
    ConfigError,
    ModelConfig,
    Padding,
    Queue,
    RateLimit,
    RuntimeDocument,
    ServerConfig,
    TensorSpec,
    Warmup,
    describe,
    load_document,
    parse_document,
)

__all__ = [
    "DATATYPES",
    "Batching",
    "Cache",
    "ConfigError",
    "ModelConfig",
    "Padding",
    "Queue",
    "RateLimit",
    "RuntimeDocument",
    "ServerConfig",
    "TensorSpec",
    "Warmup",
    "describe",
    "load_document",
    "parse_document",
]
