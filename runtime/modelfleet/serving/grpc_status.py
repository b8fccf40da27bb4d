"""The gRPC status of each serving error (runtime and gateway answer alike), and
how an error's headers travel as trailing metadata."""

from __future__ import annotations

import grpc

from modelfleet.serving.errors import DeadlineExceeded, ServingError

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""HTTP status -> gRPC status code; anything else is INTERNAL."""
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status code -> the HTTP status metrics count it under (anything else 500)."""


def grpc_code(error: ServingError) -> grpc.StatusCode:
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def trailing_metadata(error: ServingError) -> tuple[tuple[str, str], ...]:
    """The error's headers (Retry-After, the expected wait) as gRPC metadata."""
    return tuple((key.lower(), value) for key, value in error.headers.items())
