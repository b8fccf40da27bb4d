"""The frames of the run pipe between the serving process and the forward process.

A batch and its answer cross the pipe as raw array bytes behind a small
``struct`` header instead of as pickles. The forward process measured 135 µs
to unpickle a batch of 16 CNN images and 231 µs to pickle and send its
answer of 16 x 10 floats, with its caches cold from the forward pass before:
about 5% of its time at full load. Raw frames skip pickle's per-object
machinery (the name lookups of numpy's reconstructor, the memo) on both sides.

Frame of a batch: ``handle`` (u64), the array count (u32), then per array its
dtype string (4 bytes, e.g. ``<f4``), ``ndim`` (u32) and shape (``ndim`` x i64),
then every array's bytes in order, each from a multiple of 64 bytes. An answer is a tag byte (``o``: arrays
follow as in a batch; ``e``: a pickled ``(served, message)`` follows) and the
forward seconds (f64). Only these two processes write or read them.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelfleet.runtime.protocol import Array

_HEAD = struct.Struct("<QI")
_ARRAY = struct.Struct("<4sI")
_ANSWER = struct.Struct("<cd")


ALIGN = 64
"""Each array's bytes start at a multiple of this within the frame (a frame's own
buffer is at least 16-byte aligned), so that every dtype is aligned for torch."""


def _padding(n: int) -> bytes:
    return bytes(-n % ALIGN)


def _pack_arrays(arrays: Sequence[Array], parts: list[Any]) -> None:
    contiguous = [a if a.flags.c_contiguous else a.copy(order="C") for a in arrays]
    for a in contiguous:
        parts.append(_ARRAY.pack(a.dtype.str.encode(), a.ndim))
        parts.append(struct.pack(f"<{a.ndim}q", *a.shape))
    size = sum(len(p) for p in parts)
    for a in contiguous:
        parts.append(_padding(size))
        size += len(parts[-1]) + a.nbytes
        parts.append(a.data.cast("B") if a.size else b"")


def _unpack_arrays(frame: Any, offset: int, count: int) -> list[Array]:
    view = memoryview(frame)
    specs = []
    for _ in range(count):
        dtype, ndim = _ARRAY.unpack_from(view, offset)
        offset += _ARRAY.size
        shape = struct.unpack_from(f"<{ndim}q", view, offset)
        offset += 8 * ndim
        specs.append((np.dtype(dtype.rstrip(b"\0").decode()), shape))
    arrays = []
    for dtype, shape in specs:
        offset += -offset % ALIGN
        items = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(view, dtype, items, offset).reshape(shape))
        offset += items * dtype.itemsize
    if offset != len(view):
        raise ValueError(f"a frame of {len(view)} bytes held {offset} bytes of arrays")
    return arrays


def encode_batch(handle: int, arrays: Sequence[Array]) -> bytes:
    """The frame of one batch for the module ``handle``."""
    parts: list[Any] = [_HEAD.pack(handle, len(arrays))]
    _pack_arrays(arrays, parts)
    return b"".join(parts)


def decode_batch(frame: bytes | bytearray | memoryview) -> tuple[int, list[Array]]:
    """(handle, arrays) of a batch frame; the arrays are views of ``frame``."""
    handle, count = _HEAD.unpack_from(frame, 0)
    return handle, _unpack_arrays(frame, _HEAD.size, count)


def encode_answer(outputs: Sequence[Array], seconds: float) -> bytes:
    parts: list[Any] = [_ANSWER.pack(b"o", seconds), struct.pack("<I", len(outputs))]
    _pack_arrays(outputs, parts)
    return b"".join(parts)


def encode_failure(served: bool, message: str, seconds: float) -> bytes:
    return _ANSWER.pack(b"e", seconds) + pickle.dumps((served, message))


def decode_answer(
    frame: bytes | bytearray | memoryview,
) -> tuple[list[Array] | None, tuple[bool, str] | None, float]:
    """(outputs, None, seconds) of a result, or (None, (served, message), seconds)
    of a failure."""
    tag, seconds = _ANSWER.unpack_from(frame, 0)
    if tag == b"o":
        (count,) = struct.unpack_from("<I", frame, _ANSWER.size)
        return _unpack_arrays(frame, _ANSWER.size + 4, count), None, seconds
    served, message = pickle.loads(memoryview(frame)[_ANSWER.size :])
    return None, (bool(served), str(message)), seconds
