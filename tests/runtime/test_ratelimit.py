"""The token bucket behind rate limits (pure, fake time)."""

from __future__ import annotations

from modelfleet.runtime.config import RateLimit
from modelfleet.runtime.ratelimit import TokenBucket


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
