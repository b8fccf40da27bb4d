"""The runtime's own errors: a model that fails, a forward process gone, a load
refused, a request that expired in a queue. The errors every server answers with
(400, 404, 503, ...) are in ``modelfleet.serving.errors``."""

from __future__ import annotations

from modelfleet.serving.errors import DeadlineExceeded, ServingError


class ModelFailure(ServingError):
    """The model itself raised or returned something that does not match its outputs."""

    status = 500


class ForwardProcessDied(ServingError):
    """The child process that runs the forward passes is gone (a crash, an OOM kill)."""

    status = 500


class ModelLoadError(Exception):
    """A model could not be loaded: bad file, checksum mismatch, memory budget."""


def expired_error(model_key: tuple[str, str], waited_s: float) -> DeadlineExceeded:
    """The 503 of a request whose deadline passed while it waited in a queue."""
    name, version = model_key
    return DeadlineExceeded(
        f"deadline expired after {waited_s * 1000:.0f} ms in the queue of model '{name}' "
        f"version '{version}'; the request was not executed",
        retry_after_s=1,
    )
