"""The result cache: keys, LRU eviction within its byte bound, copies."""

from __future__ import annotations

import numpy as np

from modelfleet.runtime.cache import ResultCache, cache_key


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_cache_key_depends_on_model_version_and_input_bytes_only() -> None:
    a = cache_key("m", "1", [arr(1, 2)])
    assert a == cache_key("m", "1", [arr(1, 2)])
    assert a != cache_key("m", "2", [arr(1, 2)])
    assert a != cache_key("n", "1", [arr(1, 2)])
    assert a != cache_key("m", "1", [arr(1, 3)])
    assert a != cache_key("m", "1", [arr(1, 2).astype(np.float64)])
    assert a != cache_key("m", "1", [arr(1, 2).reshape(2, 1)])


def test_cache_evicts_least_recently_used_within_its_byte_bound() -> None:
    cache = ResultCache(max_bytes=16)  # two entries of 8 bytes
    cache.put(b"a", [arr(1, 2)])
    cache.put(b"b", [arr(3, 4)])
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", [arr(5, 6)])
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None
    assert cache.bytes == 16 and cache.hits == 3 and cache.misses == 1


def test_cache_ignores_entries_larger_than_itself_and_copies_values() -> None:
    cache = ResultCache(max_bytes=4)
    cache.put(b"big", [arr(1, 2)])
    assert len(cache) == 0
    cache = ResultCache(max_bytes=64)
    value = arr(1, 2)
    cache.put(b"k", [value])
    value[0] = 99
    hit = cache.get(b"k")
    assert hit is not None and hit[0][0] == 1
