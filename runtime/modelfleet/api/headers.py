"""The ``X-ModelFleet-*`` headers: who sets each and who reads it (docs/contracts.md).

HTTP header names are case-insensitive; these are the canonical spellings. Code
that reads them from a plain dict of lower-cased names uses ``.lower()``.
"""

from __future__ import annotations

SESSION = "X-ModelFleet-Session"
"""Client -> gateway: a session key; the same key gets the same version of a model."""
VERSION = "X-ModelFleet-Version"
"""Client -> gateway: the version to call, bypassing the traffic split."""
PRIORITY = "X-ModelFleet-Priority"
"""Client or gateway -> runtime: the request's priority level (1 highest; Triton's
``parameters.priority``), read before the body is decoded."""
TIMEOUT_US = "X-ModelFleet-Timeout-Us"
"""Client or gateway -> runtime: microseconds left to the request's deadline (it
shortens, never extends, the model's queue timeout)."""
QUEUE_DEPTH = "X-ModelFleet-Queue-Depth"
"""Runtime -> gateway: requests queued for the model after this answer."""
EXPECTED_WAIT_MS = "X-ModelFleet-Expected-Wait-Ms"
"""Runtime -> gateway: the queue wait a request of the model can expect there now."""
