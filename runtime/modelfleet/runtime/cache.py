"""Result cache: an LRU bounded in bytes, keyed by model, version and input bytes."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


def cache_key(model: str, version: str, arrays: Sequence[Array]) -> bytes:
    """A digest of the canonical input bytes (dtype, shape, C-order data), never the id."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"{model}\0{version}\0".encode())
    for array in arrays:
        h.update(f"{array.dtype.str}{array.shape}".encode())
        if array.dtype.kind == "O":  # BYTES: the elements, length-prefixed (not pointers)
            for item in array.reshape(-1):
                data = bytes(item)
                h.update(len(data).to_bytes(4, "little"))
                h.update(data)
        else:
            h.update(np.ascontiguousarray(array).data)
    return h.digest()


class ResultCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[list[Array], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> list[Array] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: bytes, outputs: Sequence[Array]) -> None:
        size = sum(int(a.nbytes) for a in outputs)
        if size > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = ([a.copy() for a in outputs], size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
