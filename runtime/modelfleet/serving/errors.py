"""Errors that carry their HTTP status, so handlers never map them by hand (runtime
and gateway), and the middleware that answers them as JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware


class ServingError(Exception):
    """Base class: an error a client sees as ``{"error": message}``."""

    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status, headers=self.headers)


class BadRequest(ServingError):
    """The request is malformed or does not match the model's declared inputs."""

    status = 400


class Unauthorized(ServingError):
    """The admin API was called without the right bearer token."""

    status = 401


class NotFound(ServingError):
    """Unknown model or version."""

    status = 404


class PayloadTooLarge(ServingError):
    """The body is larger than the configured limit."""

    status = 413


class RateLimited(ServingError):
    """The model's token bucket is empty; ``Retry-After`` says when to come back."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after_s = retry_after_s


class Unavailable(ServingError):
    """Queue full, not ready, draining, or the deadline expired while queued."""

    status = 503

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, reason: str = "unavailable"
    ) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after_s)))} if retry_after_s else None
        super().__init__(message, headers=headers)
        self.reason = reason
        """Why, for the shed metrics' ``reason`` label (queue_full, deadline, holdback...)."""


class DeadlineExceeded(Unavailable):
    """The request's deadline passed in a queue, or admission saw it could not be met.
    A 503 over REST, like every other refusal; ``DEADLINE_EXCEEDED`` over gRPC."""


class GatewayTimeout(ServingError):
    """The gateway gave up waiting for a runtime."""

    status = 504


class BadGateway(ServingError):
    """No runtime endpoint could be reached."""

    status = 502


def errors_as_json(max_body_bytes: int, log: logging.Logger) -> Middleware:
    """Every error leaves as ``{"error": "..."}`` with its status; nothing crashes the server."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServingError as exc:
            return exc.to_response()
        except web.HTTPRequestEntityTooLarge:
            return PayloadTooLarge(
                f"request body is larger than the limit of {max_body_bytes} bytes"
            ).to_response()
        except web.HTTPException as exc:
            if exc.empty_body:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
            message = f"{exc.reason}: {request.method} {request.path}"
            return web.json_response({"error": message}, status=exc.status, headers=headers)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal server error"}, status=500)

    return middleware
