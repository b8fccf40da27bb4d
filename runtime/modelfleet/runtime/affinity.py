"""CPU affinity and priority: the device thread on CPUs of its own, the event loop on
the rest, and the forward pass below the event loop where they share a CPU.

On a CPU-only host the forward pass is the device. Left to the OS scheduler,
the device thread, the event loop and whatever else runs on the host migrate
between CPUs and take turns on one, so the forward pass loses both CPU time
and its warm caches. ``device_cpus`` gives the device thread its CPUs and the
rest of the process (event loop, loader and executor threads) the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from modelfleet.runtime.config import ConfigError

log = logging.getLogger("modelfleet.runtime")


def split_cpus(device_cpus: Iterable[int]) -> tuple[set[int], set[int]]:
    """(CPUs of the device thread, CPUs of everything else) within this process's
    allowed set; everything else shares the device CPUs when none are left over.

    Raises ``ConfigError`` naming a CPU this process may not use.
    """
    allowed = os.sched_getaffinity(0)
    device = set(device_cpus)
    outside = sorted(device - allowed)
    if not device or outside:
        named = ", ".join(str(c) for c in outside) or "(none)"
        raise ConfigError(
            f"server.device_cpus: CPU {named} is not available to this process, "
            f"which may use CPUs {sorted(allowed)}"
        )
    return device, (allowed - device) or device


def pin_this_thread(cpus: set[int]) -> None:
    """Confines the calling thread (not the whole process) to ``cpus``."""
    os.sched_setaffinity(0, cpus)


def lower_this_thread(nice: int) -> bool:
    """Lowers the calling thread's CPU priority by ``nice`` (Linux: per thread; the
    threads it starts afterwards inherit it). Raising a priority needs privileges,
    lowering never does. False, logged, where the OS refuses."""
    if nice <= 0:
        return True
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    except (OSError, AttributeError) as exc:  # AttributeError: no setpriority on this OS
        log.warning("could not lower the forward pass's CPU priority by %d: %s", nice, exc)
        return False
    return True
