"""Shadow traffic: a share of a model's answered requests mirrored to a shadow
version, whose answers are compared with the primary's and never returned.

The mirror starts only after the primary has answered (the client never waits for
the shadow), goes to the runtime at the lowest priority level (``SHADOW_LEVEL``: it
never displaces real work there) and takes no slot of the model's admission gate;
at most ``MAX_IN_FLIGHT`` mirrors per model run at once, and a request that finds
them all busy is not mirrored (counted ``skipped``). What a shadow costs the
primary is therefore bounded by the gateway CPU of those few exchanges.

The comparison reads both answers' outputs without numpy: for numeric outputs the
largest absolute and relative difference, and for classifier-like outputs (a last
dimension over 1) whether the arg-max of every row agrees. BYTES outputs agree when
they are equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelfleet.api import inference_pb2 as pb

log = logging.getLogger("modelfleet.gateway")
SHADOW_LEVEL = 1_000
"""The priority level mirrors carry to the runtime: below any real request's."""
MAX_IN_FLIGHT = 8
"""Mirrors of one model under way at once; past it a request is not mirrored."""
_FORMATS = {
    "BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip
"""OIP datatype -> struct format of one little-endian element."""


@dataclass(frozen=True)
class Tensor:
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]
    """Numbers (numeric datatypes) or bytes (BYTES), flattened."""


Outputs = dict[str, Tensor]


def _unpack(datatype: str, raw: bytes | memoryview) -> tuple[Any, ...]:
    if datatype == "BYTES":
        out, i, data = [], 0, bytes(raw)
        while i + 4 <= len(data):
            (n,) = struct.unpack_from("<I", data, i)
            out.append(data[i + 4 : i + 4 + n])
            i += 4 + n
        return tuple(out)
    fmt = _FORMATS[datatype]
    size = struct.calcsize(fmt)
    return tuple(v for (v,) in struct.iter_unpack("<" + fmt, bytes(raw)[: len(raw) // size * size]))


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flat(item)]
    return [data]


def rest_outputs(body: bytes, header_length: str | None) -> Outputs:
    """The outputs of an OIP REST answer: JSON, or JSON and binary tensors."""
    split = int(header_length) if header_length and header_length.isdigit() else len(body)
    doc = orjson.loads(body[:split])
    offset, out = split, {}
    for entry in doc.get("outputs") or []:
        datatype, shape = entry["datatype"], tuple(entry["shape"])
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = _flat(entry.get("data"))
            if datatype == "BYTES":
                values = [v.encode() if isinstance(v, str) else v for v in values]
            out[entry["name"]] = Tensor(datatype, shape, tuple(values))
        else:
            out[entry["name"]] = Tensor(
                datatype, shape, _unpack(datatype, body[offset : offset + size])
            )
            offset += size
    return out


def grpc_outputs(body: bytes) -> Outputs:
    """The outputs of a serialised ``ModelInferResponse`` (raw output contents)."""
    response = pb.ModelInferResponse.FromString(body)
    return {
        o.name: Tensor(o.datatype, tuple(o.shape), _unpack(o.datatype, raw))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=False)
    }


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    """Largest absolute difference over the numeric outputs both answers carry."""
    max_rel: float
    """Largest difference relative to the primary's value."""
    argmax_agree: bool | None
    """Whether every row's arg-max agrees (outputs with a last dimension over 1; None
    when there is none), and BYTES outputs are equal."""


def compare(primary: Outputs, shadow: Outputs) -> Comparison:
    max_abs = max_rel = 0.0
    agree: bool | None = None
    for name, a in primary.items():
        b = shadow.get(name)
        if b is None or b.shape != a.shape or len(b.values) != len(a.values):
            return Comparison(math.inf, math.inf, False)
        if a.datatype == "BYTES" or b.datatype == "BYTES":
            agree = (agree is not False) and a.values == b.values
            continue
        for x, y in zip(a.values, b.values, strict=True):
            diff = abs(float(x) - float(y))
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / max(abs(float(x)), 1e-12))
        width = a.shape[-1] if a.shape else 0
        if len(a.shape) >= 2 and width > 1:
            rows = range(0, len(a.values), width)
            same = all(_argmax(a.values[i : i + width]) == _argmax(b.values[i : i + width])
                       for i in rows)  # fmt: skip
            agree = (agree is not False) and same
    return Comparison(max_abs, max_rel, agree)


def _argmax(values: tuple[Any, ...]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


@dataclass
class ShadowStats:
    """What the shadow version of one model has shown so far."""

    version: str
    compared: int = 0
    judged: int = 0
    """Compared answers that had an arg-max (or BYTES) to agree on."""
    agreed: int = 0
    failed: int = 0
    """Mirrors the shadow did not answer (an error, a timeout)."""
    skipped: int = 0
    """Requests not mirrored because ``MAX_IN_FLIGHT`` mirrors were under way."""
    worst_abs: float = 0.0
    worst_rel: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version, "compared": self.compared, "failed": self.failed,
            "skipped": self.skipped, "judged": self.judged, "agreed": self.agreed,
            "agreement": round(self.agreed / self.judged, 4) if self.judged else None,
            "worst_abs_diff": self.worst_abs, "worst_rel_diff": self.worst_rel,
        }  # fmt: skip


@dataclass
class Shadows:
    """The mirrors under way and the comparisons so far, per model."""

    metrics: Any
    """The gateway's metrics (``GatewayMetrics``)."""
    stats: dict[str, ShadowStats] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def of(self, model: str, version: str) -> ShadowStats:
        stats = self.stats.get(model)
        if stats is None or stats.version != version:  # a new shadow starts afresh
            stats = self.stats[model] = ShadowStats(version)
        return stats

    def mirror(
        self,
        model: str,
        version: str,
        primary: Callable[[], Outputs],
        send: Callable[[], Awaitable[Outputs]],
    ) -> None:
        """Starts one mirror in the background (or counts it skipped)."""
        stats = self.of(model, version)
        if self._running.get(model, 0) >= MAX_IN_FLIGHT:
            stats.skipped += 1
            self.metrics.shadow.labels(model, version, "skipped").inc()
            return
        self._running[model] = self._running.get(model, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(model, stats, primary, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        model: str,
        stats: ShadowStats,
        primary: Callable[[], Outputs],
        send: Callable[[], Awaitable[Outputs]],
    ) -> None:
        version = stats.version
        try:
            shadow = await send()
            result = compare(primary(), shadow)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the shadow's trouble never reaches a client
            stats.failed += 1
            self.metrics.shadow.labels(model, version, "failed").inc()
            log.debug("shadow %s of model '%s' failed: %s", version, model, exc)
            return
        finally:
            self._running[model] -= 1
        stats.compared += 1
        stats.worst_abs = max(stats.worst_abs, result.max_abs)
        stats.worst_rel = max(stats.worst_rel, result.max_rel)
        self.metrics.shadow.labels(model, version, "compared").inc()
        self.metrics.shadow_diff.labels(model, version).observe(min(result.max_abs, 1e9))
        if result.argmax_agree is not None:
            stats.judged += 1
            stats.agreed += int(result.argmax_agree)
            agree = "true" if result.argmax_agree else "false"
            self.metrics.shadow_agreement.labels(model, version, agree).inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
