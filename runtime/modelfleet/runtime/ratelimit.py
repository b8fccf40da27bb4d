"""A token bucket per model: sustained rate plus burst, on an injected clock."""

from __future__ import annotations

from modelfleet.runtime.config import RateLimit


class TokenBucket:
    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.requests_per_second
        self.capacity = float(limit.burst or max(1.0, limit.requests_per_second))
        self.tokens = self.capacity
        self.updated = now

    def try_take(self, now: float, tokens: float = 1.0) -> float:
        """Takes tokens and returns 0, or returns the seconds until they would be there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= tokens:
            self.tokens -= tokens
            return 0.0
        return (tokens - self.tokens) / self.rate
