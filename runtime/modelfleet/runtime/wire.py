"""The frames of the run pipe between the serving process and the forward process.

A batch and its answer cross the pipe as raw array bytes behind a small
``struct`` header instead of as pickles. The forward process measured 135 µs
to unpickle a batch of 16 CNN images and 231 µs to pickle and send its
answer of 16 x 10 floats, with its caches cold from the forward pass before:
about 5% of its time at full load. Raw frames skip pickle's per-object
machinery (the name lookups of numpy's reconstructor, the memo) on both sides.

Frame of a batch: ``handle`` (u64), the array count (u32), then per array its
dtype string (4 bytes, e.g. ``<f4``), ``ndim`` (u32) and shape (``ndim`` x i64),
then every array's bytes in order, each from a multiple of 64 bytes. An array of
``bytes`` objects (OIP ``BYTES``, dtype string ``|O``) is followed in the header by
its payload's size (u64), and its payload holds each element as a u32 length and
the bytes (Triton's serialisation of BYTES tensors). An answer is a tag byte
(``o``: arrays follow as in a batch; ``e``: a pickled ``(served, message)``
follows) and the forward seconds (f64). Only these two processes write or read them.

The ``*_parts`` functions return a frame as a list of buffers (the arrays' own
memory, not copied) for ``socket.sendmsg``; ``encode_*`` join them.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

_HEAD = struct.Struct("<QI")
_SIZE = struct.Struct("<Q")
_ELEMENT = struct.Struct("<I")
_ARRAY = struct.Struct("<4sI")
_ANSWER = struct.Struct("<cd")


ALIGN = 64
"""Each array's bytes start at a multiple of this within the frame (a frame's own
buffer is at least 16-byte aligned), so that every dtype is aligned for torch."""


def _padding(n: int) -> bytes:
    return bytes(-n % ALIGN)


def serialize_bytes(array: Array) -> bytes:
    """A BYTES tensor's elements, each as a u32 length and its bytes (C order)."""
    out = bytearray()
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        out += _ELEMENT.pack(len(data))
        out += data
    return bytes(out)


def deserialize_bytes(buffer: Any, count: int) -> tuple[Array, int]:
    """``count`` elements serialised by ``serialize_bytes`` from the start of
    ``buffer``: a flat object array of ``bytes`` and the bytes they took."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + _ELEMENT.size > len(view):
            raise ValueError(f"BYTES data ends after {i} of {count} elements")
        (size,) = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if offset + size > len(view):
            raise ValueError(f"BYTES element {i} claims {size} bytes, {len(view) - offset} remain")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    return out, offset


def _pack_arrays(arrays: Sequence[Array], parts: list[Any]) -> None:
    payloads: list[Any] = []
    for a in arrays:
        parts.append(_ARRAY.pack(a.dtype.str.encode(), a.ndim))
        parts.append(struct.pack(f"<{a.ndim}q", *a.shape))
        payload: Any = b""
        if a.dtype.kind == "O":
            payload = serialize_bytes(a)
            parts.append(_SIZE.pack(len(payload)))
        elif a.size:
            payload = (a if a.flags.c_contiguous else a.copy(order="C")).data.cast("B")
        payloads.append(payload)
    size = sum(len(p) for p in parts)
    for payload in payloads:
        parts.append(_padding(size))
        size += len(parts[-1]) + len(payload)
        parts.append(payload)


def _unpack_arrays(frame: Any, offset: int, count: int) -> list[Array]:
    view = memoryview(frame)
    specs = []
    for _ in range(count):
        dtype, ndim = _ARRAY.unpack_from(view, offset)
        offset += _ARRAY.size
        shape = struct.unpack_from(f"<{ndim}q", view, offset)
        offset += 8 * ndim
        dt = np.dtype(dtype.rstrip(b"\0").decode())
        size = None
        if dt.kind == "O":
            (size,) = _SIZE.unpack_from(view, offset)
            offset += _SIZE.size
        specs.append((dt, shape, size))
    arrays = []
    for dtype, shape, size in specs:
        offset += -offset % ALIGN
        items = int(np.prod(shape, dtype=np.int64))
        if size is not None:
            flat, used = deserialize_bytes(view[offset : offset + size], items)
            if used != size:
                raise ValueError(f"BYTES payload of {size} bytes held {used}")
            arrays.append(flat.reshape(shape))
            offset += size
            continue
        arrays.append(np.frombuffer(view, dtype, items, offset).reshape(shape))
        offset += items * dtype.itemsize
    if offset != len(view):
        raise ValueError(f"a frame of {len(view)} bytes held {offset} bytes of arrays")
    return arrays


def batch_parts(handle: int, arrays: Sequence[Array]) -> list[Any]:
    """The frame of one batch for the module ``handle``, as buffers."""
    parts: list[Any] = [_HEAD.pack(handle, len(arrays))]
    _pack_arrays(arrays, parts)
    return parts


def encode_batch(handle: int, arrays: Sequence[Array]) -> bytes:
    """The frame of one batch for the module ``handle``."""
    return b"".join(batch_parts(handle, arrays))


def decode_batch(frame: bytes | bytearray | memoryview) -> tuple[int, list[Array]]:
    """(handle, arrays) of a batch frame; the arrays are views of ``frame``."""
    handle, count = _HEAD.unpack_from(frame, 0)
    return handle, _unpack_arrays(frame, _HEAD.size, count)


def answer_parts(outputs: Sequence[Array], seconds: float) -> list[Any]:
    parts: list[Any] = [_ANSWER.pack(b"o", seconds), struct.pack("<I", len(outputs))]
    _pack_arrays(outputs, parts)
    return parts


def encode_answer(outputs: Sequence[Array], seconds: float) -> bytes:
    return b"".join(answer_parts(outputs, seconds))


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
