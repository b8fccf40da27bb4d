"""The runtime's own errors: a model that fails, a forward process gone, a load
refused, a request that expired in a queue. The errors every server answers with
(400, 404, 503, ...) are in ``modelfleet.serving.errors``."""

from __future__ import annotations

from modelfleet.serving.errors import DeadlineExceeded, ServingError, Unavailable


class ModelFailure(ServingError):
    """The model itself raised or returned something that does not match its outputs."""

    status = 500


class ForwardProcessDied(ServingError):
    """The child process that runs the forward passes is gone (a crash, an OOM kill)."""

    status = 500


class DeviceOutOfMemory(Unavailable):
    """A batch ran out of device memory: that batch fails with 503, nothing else does."""


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


OUT_OF_MEMORY = "out of device memory: "
"""How the message of a ``DeviceOutOfMemory`` begins (the forward process sends only
the text of a failure: its parent knows the 503 by it)."""


def out_of_memory_error(
    model_key: tuple[str, str], rows: int, *, split: bool = False
) -> DeviceOutOfMemory:
    """The 503 of a batch that ran out of device memory (``split``: it failed again as
    a half of a larger batch that ran out first)."""
    name, version = model_key
    again = " (again, after its batch was split in two)" if split else ""
    return DeviceOutOfMemory(
        f"{OUT_OF_MEMORY}model '{name}' version '{version}' could not run a batch of "
        f"{rows} rows{again}; the request was not answered, retry it later or with fewer rows",
        retry_after_s=1,
    )


def remote_failure(message: str) -> ServingError:
    """A failure the forward process reported as served: 503 when the device ran out of
    memory, else the model's failure (500)."""
    if message.startswith(OUT_OF_MEMORY):
        return DeviceOutOfMemory(message, retry_after_s=1)
    return ModelFailure(message)
