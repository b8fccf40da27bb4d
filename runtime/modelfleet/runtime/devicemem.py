"""Device memory as the runtime measures it: the allocator's statistics, and what
the runtime learns from them about each model version.

``DeviceMemory`` is the allocator of one device: ``CudaMemory`` reads
``torch.cuda``'s caching allocator; ``Unmeasured`` (CPU) answers None to every
question, because the CPU allocator keeps no such statistics that could be
told apart from the rest of the process. Tests inject a fake of their own.

From these statistics the executor measures, per version:

* its weights: the allocated bytes its load added (or, when another load ran
  at the same time, the bytes of its parameters and buffers);
* its peak working memory at each warm-up batch size: the allocator's peak
  during the pass, less what was allocated when the pass began (peak stats
  reset before each pass; a pass during which another load ran is not used);
* whether its memory came back on unload: the allocated bytes after unload
  (and ``empty_cache``) must be its weights fewer than before, within
  ``LEAK_TOLERANCE_BYTES``; the reserved bytes after unload are reported.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

log = logging.getLogger("modelfleet.runtime")
MiB = 1024 * 1024

LEAK_TOLERANCE_BYTES = 1 * MiB
"""Allocated bytes an unload may leave behind before the version is flagged as leaking."""

RECENT_UNLOADS = 32
"""Unload checks the runtime remembers (the admin state reports them)."""


class DeviceMemory(Protocol):
    """The allocator statistics of one device; None where they are not measured."""

    measured: bool
    """Whether the answers below are numbers (CUDA) or None (CPU)."""

    def allocated(self) -> int | None:
        """Bytes held by live tensors (``torch.cuda.memory_allocated``)."""
        ...

    def reserved(self) -> int | None:
        """Bytes the caching allocator holds from the driver (``memory_reserved``)."""
        ...

    def peak_allocated(self) -> int | None:
        """The most bytes allocated since the last ``reset_peak`` (``max_memory_allocated``)."""
        ...

    def reset_peak(self) -> None:
        """Starts a new peak (``reset_peak_memory_stats``)."""
        ...

    def empty_cache(self) -> None:
        """Returns the allocator's unused cached blocks to the driver (``empty_cache``)."""
        ...


class CudaMemory:
    """``torch.cuda``'s caching allocator of one CUDA device."""

    measured = True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def allocated(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device))

    def reserved(self) -> int | None:
        return int(torch.cuda.memory_reserved(self.device))

    def peak_allocated(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


class Unmeasured:
    """A device whose allocator the runtime cannot measure (the CPU): every figure is None."""

    measured = False

    def allocated(self) -> int | None:
        return None

    def reserved(self) -> int | None:
        return None

    def peak_allocated(self) -> int | None:
        return None

    def reset_peak(self) -> None:
        pass

    def empty_cache(self) -> None:
        pass


def device_memory(device: torch.device) -> DeviceMemory:
    """The allocator statistics of ``device``: measured on CUDA, None elsewhere."""
    return CudaMemory(device) if device.type == "cuda" else Unmeasured()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (CUDA's allocator)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass(slots=True)
class Footprint:
    """What one model version takes on its device, as measured (None: not measured)."""

    weights_bytes: int | None = None
    """Allocated bytes its load added: the weights (and buffers) at rest."""
    peak_by_batch: dict[int, int] = field(default_factory=dict)
    """Rows of a warm-up batch -> peak working bytes of its pass (beyond what was
    allocated when the pass began)."""
    leaked_bytes: int | None = None
    """After unload: allocated bytes the version did not give back (0: all came back)."""
    reserved_after_unload_bytes: int | None = None
    """After unload and ``empty_cache``: bytes the allocator still reserves on the device."""

    @property
    def peak_working_bytes(self) -> int | None:
        """The largest peak working memory over the measured batch sizes."""
        return max(self.peak_by_batch.values()) if self.peak_by_batch else None

    def record_pass(self, rows: int, peak: int) -> None:
        self.peak_by_batch[rows] = max(peak, self.peak_by_batch.get(rows, 0))


@dataclass(frozen=True, slots=True)
class UnloadCheck:
    """One unload as the runtime verified it."""

    name: str
    version: str
    weights_bytes: int
    freed_bytes: int
    """Allocated bytes before the unload less those after it."""
    reserved_after_bytes: int
    at: float
    """Epoch seconds."""

    @property
    def leaked_bytes(self) -> int:
        """Bytes of the weights that did not come back (0 within the tolerance)."""
        missing = self.weights_bytes - self.freed_bytes
        return missing if missing > LEAK_TOLERANCE_BYTES else 0


class Ledger:
    """The runtime's record of its device's memory: recent unload checks and the
    loads in flight (measurements that overlap a load are not trusted)."""

    def __init__(self, memory: DeviceMemory) -> None:
        self.memory = memory
        self.unloads: deque[UnloadCheck] = deque(maxlen=RECENT_UNLOADS)
        self.loads_in_flight = 0
        self.loads_started = 0

    def load_began(self) -> int:
        """Counts a load in; returns the count of loads started before it."""
        self.loads_in_flight += 1
        self.loads_started += 1
        return self.loads_started - 1

    def load_ended(self) -> None:
        self.loads_in_flight -= 1

    def quiet_since(self, started: int, *, in_flight: int = 0) -> bool:
        """No other load began since ``loads_started`` was ``started``, and only
        ``in_flight`` loads (the caller's own) run now."""
        return self.loads_in_flight == in_flight and self.loads_started == started

    def weights(self, before: int | None, after: int | None, tensors: int, quiet: bool) -> int:
        """A version's weights: the allocated bytes its load added when no other load
        ran meanwhile and the device is measured, else the bytes of its tensors."""
        if before is None or after is None or not quiet:
            return tensors
        return max(after - before, tensors)

    def measure_pass(self, footprint: Footprint, rows: int, run: _Pass) -> None:
        """Runs one warm-up pass and records its peak working memory in ``footprint``."""
        memory = self.memory
        started = self.loads_started
        quiet_before = self.loads_in_flight == 0
        memory.reset_peak()
        base = memory.allocated()
        run()
        peak = memory.peak_allocated()
        if base is None or peak is None:
            return
        if not (quiet_before and self.quiet_since(started)):
            log.debug("a load ran during a warm-up pass of %d rows: its peak is not used", rows)
            return
        footprint.record_pass(rows, max(0, peak - base))

    def check_unload(
        self, key: tuple[str, str], footprint: Footprint, before: int | None, free: _Free
    ) -> UnloadCheck | None:
        """Frees a version (``free``), returns the cached blocks to the driver and
        verifies that its weights came back; None where memory is not measured, or
        while a load runs (its allocations would read as the version's)."""
        started = self.loads_started
        quiet = self.loads_in_flight == 0
        free()
        self.memory.empty_cache()
        after = self.memory.allocated()
        weights = footprint.weights_bytes or 0
        if before is not None and after is not None and weights - (before - after) > 0:
            gc.collect()  # a reference cycle may still hold the module's tensors
            self.memory.empty_cache()
            after = self.memory.allocated()
        reserved = self.memory.reserved()
        footprint.reserved_after_unload_bytes = reserved
        if before is None or after is None or reserved is None:
            return None
        if not (quiet and self.quiet_since(started)):
            log.info("model '%s' version '%s' unloaded during a load: its memory is not "
                     "verified", *key)  # fmt: skip
            return None
        name, version = key
        check = UnloadCheck(
            name=name,
            version=version,
            weights_bytes=weights,
            freed_bytes=before - after,
            reserved_after_bytes=reserved,
            at=time.time(),
        )
        footprint.leaked_bytes = check.leaked_bytes
        self.unloads.append(check)
        if check.leaked_bytes:
            log.warning(
                "model '%s' version '%s' did not give its device memory back: %.1f MiB of "
                "its %.1f MiB are still allocated after unload (%.1f MiB reserved)",
                name, version, check.leaked_bytes / MiB, check.weights_bytes / MiB,
                reserved / MiB,
            )  # fmt: skip
        return check

    def leaks(self) -> list[UnloadCheck]:
        return [c for c in self.unloads if c.leaked_bytes]

    def reserved_after_last_unload(self) -> int | None:
        return self.unloads[-1].reserved_after_bytes if self.unloads else None


class _Pass(Protocol):
    def __call__(self) -> object: ...


class _Free(Protocol):
    def __call__(self) -> None: ...
