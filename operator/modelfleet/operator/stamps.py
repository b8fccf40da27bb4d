"""Times in status: RFC 3339 in UTC to the second, as Kubernetes writes them."""

from __future__ import annotations

import datetime


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as status writes them; None stays None (a merge patch removes it)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: object) -> float | None:
    """A time read back from status; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
