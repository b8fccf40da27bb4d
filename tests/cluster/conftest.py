"""The ``kube_cluster`` fixture: the cluster KUBECONFIG points at, or our own control plane.

When neither is possible the cluster tests fail with a message that names what
is missing; they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.controlplane import (
    ClusterError,
    ControlPlane,
    build_binaries,
    pod_ip_range,
    run_kubectl,
)


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    pod_ip_range: str
    own: ControlPlane | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                    "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.bin_dir, self.env, args, input=input, check=check)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Cluster]:
    try:
        bin_dir = build_binaries()
    except ClusterError as exc:
        pytest.fail(f"cluster tests need the Kubernetes binaries: {exc}")
    user_config = os.environ.get("KUBECONFIG")
    if user_config and Path(user_config).exists():
        cluster = Cluster(Path(user_config), bin_dir, pod_ip_range(Path(user_config)))
        if cluster.kubectl("version", check=False).returncode == 0:
            yield cluster
            return
        pytest.fail(f"KUBECONFIG={user_config} is set but its API server does not answer")
    if not shutil.which("openssl"):
        pytest.fail("cluster tests need openssl to make the control plane's certificates")
    plane = ControlPlane(bin_dir)
    try:
        plane.start()
    except ClusterError as exc:
        plane.stop()
        pytest.fail(f"the test control plane did not start: {exc}")
    try:
        yield Cluster(plane.kubeconfig, bin_dir, plane.pod_ip_range, own=plane)
    finally:
        plane.stop()
        shutil.rmtree(plane.data, ignore_errors=True)
