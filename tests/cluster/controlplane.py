"""A real Kubernetes control plane on loopback for the cluster tests.

etcd, kube-apiserver (TLS, RBAC, service-account signing), kube-controller-manager
and kube-scheduler, built from upstream sources by ``build.sh``, plus kwok, which
plays the kubelets: fake GPU nodes whose pods become Running and Ready and get
pod IPs from a loopback range, so a test can start a real process on a pod's IP.

    python -m tests.cluster.controlplane up      # detached; prints the KUBECONFIG line
    python -m tests.cluster.controlplane down
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MODELFLEET_CACHE", Path.home() / ".cache/modelfleet")) / "cluster"
RUN_DIR = CACHE / "run"
POD_CIDR = "127.1.0.0/16"
"""Assumed for a cluster this module did not start (one it started records its own)."""
NODES = 4
GPUS_PER_NODE = 8


class ClusterError(Exception):
    """The control plane could not be built or started; the message says why."""


def pod_ip_range(kubeconfig: Path) -> str:
    """The pod IP range of a cluster: the one a control plane of ours recorded beside
    its kubeconfig (``make cluster-up``), else ``POD_CIDR``."""
    recorded = kubeconfig.parent / "pod-cidr"
    return recorded.read_text().strip() if recorded.exists() else POD_CIDR


def build_binaries() -> Path:
    """Runs build.sh (cached: instant when already built) and returns the bin folder."""
    result = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ClusterError(
            "building the cluster binaries failed (tests/cluster/build.sh, output above)"
        )
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def run_kubectl(
    bin_dir: Path,
    env: dict[str, str],
    args: tuple[str, ...],
    *,
    input: str | None = None,
    check: bool = True,
    error: type[Exception] = AssertionError,
) -> subprocess.CompletedProcess[str]:
    """The built kubectl (never an older one on the PATH); ``error`` when it fails."""
    result = subprocess.run([str(bin_dir / "kubectl"), *args], input=input, text=True,
                            capture_output=True, env=env)  # fmt: skip
    if check and result.returncode != 0:
        raise error(f"kubectl {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result


def make_pki(pki: Path) -> None:
    """One CA; the API server's serving cert; an admin client cert in system:masters;
    the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "30", "-subj", "/CN=modelfleet-test-ca", cwd=pki)  # fmt: skip
    (pki / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
    )
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=modelfleet-admin", "client.ext"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subject, cwd=pki)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", "-extfile", ext, cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, pki: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "modelfleet-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "modelfleet-test", "context": {"cluster": "modelfleet-test", "user": "admin"}}],
        "current-context": "modelfleet-test",
    }  # fmt: skip


class ControlPlane:
    """Starts the components; ``stop`` ends every process it started, by PID."""

    def __init__(
        self, bin_dir: Path, data_dir: Path | None = None, apiserver_args: tuple[str, ...] = ()
    ) -> None:
        # Pods get IPs from a loopback /16 chosen per control plane, so that two test
        # runs on one machine (two clones, say) never hand out the same addresses.
        self.bin_dir = bin_dir
        self.apiserver_args = apiserver_args
        """Extra kube-apiserver flags (the operator benchmark turns on an audit log)."""
        self.data = data_dir or Path(tempfile.mkdtemp(prefix="modelfleet-cluster-"))
        self.pki = self.data / "pki"
        self.kubeconfig = self.data / "kubeconfig"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.pod_ip_range = f"127.{random.SystemRandom().randint(2, 254)}.0.0/16"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip

    def _start(self, name: str, *args: str) -> None:
        log = (self.data / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen([str(self.bin_dir / name), *args], stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        (self.data / "pids").open("a").write(f"{self.procs[-1].pid}\n")

    def _wait(self, what: str, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    name = Path(str(proc.args[0])).name  # type: ignore[index]
                    tail = (self.data / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise ClusterError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}"
                    )
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"timed out waiting for {what} (logs in {self.data})")

    def _get(self, path: str) -> Any:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(self.server + path, context=context, timeout=3) as resp:
            body = resp.read()
            return json.loads(body) if body.startswith(b"{") else body.decode()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            self.bin_dir, self.env, args, input=input, check=check, error=ClusterError
        )

    def start(self) -> ControlPlane:
        started = time.monotonic()
        make_pki(self.pki)
        import yaml

        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, self.pki)))
        (self.data / "pod-cidr").write_text(self.pod_ip_range + "\n")
        etcd_port, peer_port = free_port(), free_port()
        self._start("etcd", "--data-dir", str(self.data / "etcd"),
                    "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                    "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync", "--log-level", "warn")  # fmt: skip
        pki = self.pki
        self._start("kube-apiserver",
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--authorization-mode=RBAC", "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true", "--v=0", *self.apiserver_args)  # fmt: skip
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz") == "ok")
        for name in ("kube-controller-manager", "kube-scheduler"):
            extra = ([f"--service-account-private-key-file={pki / 'sa.key'}",
                      f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=false",
                      f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                      f"--cluster-signing-key-file={pki / 'ca.key'}"]
                     if name == "kube-controller-manager" else [])  # fmt: skip
            self._start(name, f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
                        "--bind-address=127.0.0.1", f"--secure-port={free_port()}", *extra)  # fmt: skip
        self._start("kwok", f"--kubeconfig={self.kubeconfig}", f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    f"--cidr={self.pod_ip_range}", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40")  # fmt: skip
        self._wait("the default service account",
                   lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0)  # fmt: skip
        self.kubectl("apply", "-f", "-", input=nodes_yaml())
        self._wait("fake GPU nodes Ready", self._nodes_ready)
        self.startup_s = time.monotonic() - started
        return self

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        items = json.loads(out.stdout)["items"]
        ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in n.get("status", {}).get("conditions", []))]  # fmt: skip
        return len(ready) >= NODES

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def nodes_yaml() -> str:
    docs = []
    for i in range(NODES):
        docs.append(json.dumps({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"gpu-node-{i}", "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": f"gpu-node-{i}",
                                    "nvidia.com/gpu.present": "true"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)},
            },
        }))  # fmt: skip
    return "\n---\n".join(docs)


def up() -> int:
    if (RUN_DIR / "kubeconfig").exists():
        print(
            f"already up; run 'make cluster-down' first\nexport KUBECONFIG={RUN_DIR / 'kubeconfig'}"
        )
        return 0
    bin_dir = build_binaries()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(bin_dir, RUN_DIR)
    try:
        plane.start()
    except Exception:
        plane.stop()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        raise
    print(
        f"control plane up in {plane.startup_s:.1f} s ({NODES} fake nodes with {GPUS_PER_NODE} GPUs each)"
    )
    print(f"binaries (kubectl, helm, ...): {bin_dir}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    print(f"export PATH={bin_dir}:$PATH")
    print(f"pod IPs: {plane.pod_ip_range}")
    return 0


def down() -> int:
    pids = RUN_DIR / "pids"
    if pids.exists():
        for line in pids.read_text().split():
            try:
                os.killpg(int(line), signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(1)
        for line in pids.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    print("control plane down")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "build"])
    args = parser.parse_args()
    if args.action == "build":
        print(build_binaries())
        return 0
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())


_ = atexit  # the pytest fixture registers its own cleanup
