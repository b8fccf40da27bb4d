"""Freed memory stays in the process between forward passes (``malloc``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from modelfleet.runtime.malloc import retain_freed_memory
from tests.support.servers import ENV

FORWARDS = textwrap.dedent(
    """
    import resource, sys, torch
    from modelfleet.runtime.malloc import retain_freed_memory
    from modelfleet.runtime.examples import cnn
    took = retain_freed_memory(int(sys.argv[1]))
    torch.set_num_threads(1)
    model, x = cnn().eval(), torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            model(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(took, (after - before) / 20)
    """
)


def faults_per_forward(retain_mb: int) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", FORWARDS, str(retain_mb)],
        capture_output=True, text=True, check=True, timeout=120, env=ENV,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_forward_pass_with_mib_of_activations_no_longer_faults_its_memory_in() -> None:
    took, faults = faults_per_forward(1024)
    assert took, "mallopt should accept both thresholds on glibc"
    # Each batch-16 pass allocates a few MiB of activations: fetched anew from the
    # kernel that was 666 page faults per pass here; kept in the heap, 8-20.
    assert faults < 100, f"{faults} minor page faults per forward pass"


def test_zero_leaves_the_c_librarys_own_thresholds() -> None:
    assert retain_freed_memory(0) is False
