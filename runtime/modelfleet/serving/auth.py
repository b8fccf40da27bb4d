"""Bearer-token protection for the admin APIs (runtime and gateway)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from modelfleet.serving.errors import Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_token(path: str | Path | None) -> str | None:
    """Reads a token from a mounted Secret file; ``None`` or an empty file means off."""
    if path is None:
        return None
    token = Path(path).read_text().strip()
    return token or None


def bearer_auth(token: str) -> Middleware:
    """An aiohttp middleware that refuses requests without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Unauthorized("missing or wrong bearer token for the admin API").to_response()
        return await handler(request)

    return middleware
