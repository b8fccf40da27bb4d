"""Token bucket, result cache and recent latencies (pure, fake time)."""

from __future__ import annotations

import numpy as np
import pytest

from modelfleet.runtime.cache import ResultCache, cache_key
from modelfleet.runtime.config import RateLimit
from modelfleet.runtime.ratelimit import TokenBucket
from modelfleet.runtime.recent import RecentLatencies


def test_token_bucket_admits_the_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(RateLimit(requests_per_second=10, burst=3), now=0.0)
    assert [bucket.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.try_take(0.0)
    assert 0.09 < wait <= 0.1


def test_token_bucket_refills_at_the_sustained_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(RateLimit(requests_per_second=10, burst=2), now=0.0)
    bucket.try_take(0.0)
    bucket.try_take(0.0)
    assert bucket.try_take(0.1) == 0.0
    assert bucket.try_take(0.1) > 0
    assert bucket.try_take(100.0) == 0.0 and bucket.try_take(100.0) == 0.0
    assert bucket.try_take(100.0) > 0  # never more than the burst


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


def test_recent_latencies_give_the_p99_of_the_last_window_only() -> None:
    recent = RecentLatencies(size=1000, window_s=60)
    assert recent.quantile_ms(0.99, now=0.0) is None
    for i in range(100):
        recent.record(float(i), 0.001 * (i + 1))  # 1 ms .. 100 ms
    assert recent.quantile_ms(0.99, now=100.0) == pytest.approx(99.4, abs=0.2)
    # Only the samples recorded at t >= 100 - 60 count: 41..100 ms.
    assert recent.quantile_ms(0.0, now=100.0) == pytest.approx(41.0)
    assert recent.quantile_ms(0.99, now=1000.0) is None
