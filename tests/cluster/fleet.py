"""A pool on the test control plane with what its kwok pods would run.

kwok pods run no containers, so for each pod a test starts what the pod would run,
bound to the pod's loopback IP; the operator runs unchanged (``python -m modelfleet
operator``). ``MODELFLEET_CLUSTER_PODS`` says how:

* ``containers`` (the default): the pod's container, as the API server holds the pod
  (the operator's StatefulSet and Deployment templates: image, command, env, mounts,
  user, read-only root), run by podman (tests/cluster/podman_pods.py) from the images
  `make images` builds, plus the suite's test architectures (tests/cluster/models_image.py);
  the pool's model store is a PersistentVolumeClaim bound to the test's folder, and a
  start returns once the container's readinessProbe passes;
* ``processes``: a runtime (or gateway) process of the clone's sources, from the
  ConfigMap content the pod would mount (quicker to debug: no image to rebuild).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.kubelet import Kubelet
from tests.cluster.podman_pods import PodContainer, PodmanAgent, bind_to_pod_ip
from tests.support.servers import ENV, Process
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}
).encode()


PODS_MODE = "MODELFLEET_CLUSTER_PODS"
"""``containers`` (default) or ``processes``: what runs in the kwok pods."""
CLAIM = "models"
"""The model store's PersistentVolumeClaim in containers mode, unless the pool names one."""
Served = Process | PodContainer
"""A pod's runtime or gateway: a host process, or the pod's container in podman."""


def pods_mode() -> str:
    mode = os.environ.get(PODS_MODE, "").strip() or "containers"
    if mode not in ("processes", "containers"):
        raise AssertionError(f"{PODS_MODE}={mode!r}: expected 'processes' or 'containers'")
    return mode


@functools.cache
def built_images() -> str:
    """`make images`, once per test session, so the containers run these sources."""
    from tests.containers.conftest import build_images

    return build_images().runtime


@functools.cache
def suite_image() -> str:
    """The runtime image with the suite's test architectures (tests/cluster/models_image.py),
    built on :func:`built_images` once per test session: the image of the pools that
    ``running_fleet`` starts in containers mode, unless the pool names one."""
    from tests.cluster.models_image import build_test_models_image

    return build_test_models_image(built_images())


def model_yaml(name: str, ns: str, pool: str, **spec: Any) -> str:
    body = {
        "pool": pool, "version": "1", "memoryMB": 300,
        "source": {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:mlp"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        **spec,
    }  # fmt: skip
    return yaml.safe_dump({"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferenceModel",
                           "metadata": {"name": name, "namespace": ns}, "spec": body})  # fmt: skip


def pool_yaml(name: str, ns: str, **spec: Any) -> str:
    body = {"replicas": {"min": 2, "max": 2}, "memoryBudgetMB": 1000, **spec}
    return yaml.safe_dump({"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool",
                           "metadata": {"name": name, "namespace": ns}, "spec": body})  # fmt: skip


class Fleet:
    """The cluster, the operator process, and a process (or container) per kwok pod of one pool."""

    def __init__(
        self, cluster: Cluster, tmp: Path, store: Path, ns: str, pool: str,
        mode: str = "", claim: str = CLAIM, kubelet: bool = False,
    ) -> None:  # fmt: skip
        self.k, self.tmp, self.store, self.ns, self.pool = cluster, tmp, store, ns, pool
        self.operator: subprocess.Popen[bytes] | None = None
        self.runtimes: dict[str, Served] = {}
        self.gateway: Served | None = None
        self.token = tmp / "token"
        self.operator_args: tuple[str, ...] = ()
        self.mode = mode or pods_mode()
        """``processes`` or ``containers`` (``MODELFLEET_CLUSTER_PODS`` unless given)."""
        self.claim = claim
        self.agent = PodmanAgent(cluster.kubectl, tmp / "pods", claims={claim: store})
        """Runs the pods' containers in containers mode; ``claim`` is the store's claim."""
        self.kubelet = Kubelet(cluster.kubectl) if kubelet and self.mode == "containers" else None
        """With ``kubelet`` (containers mode): probes decide each pod's Ready condition and
        crashed containers are restarted per the pod's restartPolicy (tests/cluster/kubelet.py)."""

    def start_operator(self, *extra: str) -> None:
        """``modelfleet operator --namespace NS`` with ``extra`` arguments (the same ones
        again when it is restarted)."""
        self.operator_args = extra or self.operator_args
        env = {**ENV, "KUBECONFIG": str(self.k.kubeconfig)}
        log = (self.tmp / "operator.log").open("a")
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "modelfleet", "operator", "--namespace", self.ns,
             *self.operator_args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.kill()
            self.operator.wait(timeout=10)

    def apply(self, manifest: str) -> None:
        self.k.kubectl("apply", "-f", "-", input=manifest)

    def apply_pool(self, name: str, **spec: Any) -> None:
        """Another pool in the namespace whose pods the test runs as this pool's (in
        containers mode: the model store's claim and the suite's image)."""
        if self.mode == "containers":
            spec = {"modelStore": {"claimName": self.claim}, "image": suite_image(), **spec}
        self.apply(pool_yaml(name, self.ns, **spec))

    def json(self, *args: str) -> Any:
        return json.loads(self.k.kubectl(*args, "-n", self.ns, "-o", "json").stdout)

    def pods(self, component: str, pool: str = "") -> list[dict[str, Any]]:
        """The pods of this pool (or of ``pool``) with ``component``, once they have IPs."""
        selector = f"app.kubernetes.io/instance={pool or self.pool},app.kubernetes.io/component={component}"
        items = self.json("get", "pods", "-l", selector)["items"]
        return [p for p in items if p["status"].get("podIP")]

    def config(self, suffix: str, key: str, pool: str = "") -> dict[str, Any]:
        data = self.json("get", "configmap", f"{pool or self.pool}-{suffix}")["data"]
        return yaml.safe_load(data[key])  # type: ignore[no-any-return]

    def pool_token(self, pool: str) -> Path:
        """A file with ``pool``'s admin token (its Secret), as the pool's pods mount it."""
        if pool == self.pool:
            return self.token
        path = self.tmp / f"{pool}-token"
        secret = self.json("get", "secret", f"{pool}-admin-token")
        path.write_bytes(base64.b64decode(secret["data"]["token"]))
        return path

    def start_container(self, pod: dict[str, Any]) -> PodContainer:
        """The pod's container in podman, ready (its readinessProbe passed); the model
        store folder is opened to the pod's non-root user, as a volume would be."""
        self.store.chmod(0o755)
        for file in self.store.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        served = self.agent.serve(pod, adjust=bind_to_pod_ip(pod))
        if self.kubelet is not None:
            self.kubelet.watch(pod, served)
        return served

    def start_runtime(self, pod: dict[str, Any]) -> Served:
        """What the kubelet would run: `modelfleet serve --config state.yaml`, with the
        pod's own ConfigMap entry; the model store is where the test keeps the models.
        The pod may be of another pool of the namespace (its own document and token)."""
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        if self.mode == "containers":
            self.runtimes[name] = self.start_container(pod)
            return self.runtimes[name]
        pool = pod["metadata"]["labels"]["app.kubernetes.io/instance"]
        document = self.config("state", f"{name}.yaml", pool)
        document["server"].update(
            host=ip, model_store=str(self.store), admin_token_file=str(self.pool_token(pool))
        )
        self.runtimes[name] = Process(self.tmp, "serve", "--config", document, ip)
        return self.runtimes[name]

    def start_gateway(self, pod: dict[str, Any]) -> None:
        if self.mode == "containers":
            self.gateway = self.start_container(pod)
            return
        document = self.config("routes", "routes.yaml")
        document["server"].update(host=pod["status"]["podIP"], admin_token_file=str(self.token))
        self.gateway = Process(self.tmp, "gateway", "--routes", document, pod["status"]["podIP"])

    def status(self, name: str) -> dict[str, Any]:
        return self.json("get", "inferencemodel", name).get("status") or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == kind)

    def call(
        self, name: str, headers: dict[str, str] | None = None, body: bytes = BODY
    ) -> tuple[int, str]:
        """One inference through the gateway: (HTTP status, the answering version)."""
        assert self.gateway is not None
        req = urllib.request.Request(
            f"{self.gateway.url}/v2/models/{name}/infer", data=body, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status), str(json.loads(resp.read())["model_version"])
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")[:300]

    def infer(self, name: str) -> int:
        return self.call(name)[0]

    def admin_state(self, pod: str) -> dict[str, Any]:
        ip = self.runtimes[pod].host
        req = urllib.request.Request(f"http://{ip}:8081/admin/state",
                                     headers={"Authorization": f"Bearer {self.token.read_text()}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())["actual"]  # type: ignore[no-any-return]

    def hosted(self, pod: str) -> list[str]:
        """Model versions a runtime process reports (its admin API), ``name:state``."""
        return [f"{m['name']}:{m['state']}" for m in self.admin_state(pod)["models"]]

    def versions_loaded(self, name: str) -> dict[str, set[str]]:
        """Pod -> the versions of ``name`` it holds (any state)."""
        return {pod: {m["version"] for m in self.admin_state(pod)["models"] if m["name"] == name}
                for pod in self.runtimes}  # fmt: skip


STORE_CLAIM = """
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}-{claim}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: {store}}}
  claimRef: {{namespace: {ns}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {ns}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {ns}-{claim}
  resources: {{requests: {{storage: 1Gi}}}}
"""
"""The model store in containers mode: a PersistentVolume of the test's folder, bound
to the pool's claim (the runtime pods are scheduled once it is bound)."""


@contextlib.contextmanager
def running_fleet(
    k: Cluster, tmp: Path, store: Path, ns: str, pool: str,
    operator_args: tuple[str, ...] = (), mode: str = "", kubelet: bool = False, **pool_spec: Any,
) -> Iterator[Fleet]:  # fmt: skip
    """CRDs, a namespace, the operator (with ``operator_args``), a pool (2 pods unless
    ``replicas.min`` says otherwise) with its processes; all torn down after (the
    operator's log tail is printed for a failing test's report)."""
    for crd in ("inferencepool.yaml", "inferencemodel.yaml"):
        k.kubectl("apply", "-f", str(ROOT / "crds" / crd))
    for crd in ("inferencepools", "inferencemodels"):
        k.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}.modelfleet.io", "--timeout=30s"
        )
    k.kubectl("create", "namespace", ns, check=False)
    mode = mode or pods_mode()
    claim = str((pool_spec.get("modelStore") or {}).get("claimName") or CLAIM)
    fleet = Fleet(k, tmp, store, ns, pool, mode=mode, claim=claim, kubelet=kubelet)
    if mode == "containers":
        image = pool_spec.get("image") or suite_image()
        k.kubectl("apply", "-f", "-", input=STORE_CLAIM.format(ns=ns, claim=claim, store=store))
        pool_spec = {**pool_spec, "modelStore": {"claimName": claim}, "image": image}
    fleet.start_operator(*operator_args)
    count = int((pool_spec.get("replicas") or {}).get("min", 2))
    try:
        fleet.apply(pool_yaml(pool, ns, **pool_spec))
        runtime_pods = wait_for(
            f"{count} runtime pod(s) with IPs",
            lambda: len(fleet.pods("runtime")) == count and fleet.pods("runtime"),
        )
        gateway_pods = wait_for("a gateway pod with an IP", lambda: fleet.pods("gateway"))
        secret = fleet.json("get", "secret", f"{pool}-admin-token")
        fleet.token.write_bytes(base64.b64decode(secret["data"]["token"]))
        for pod in runtime_pods:
            fleet.start_runtime(pod)
        fleet.start_gateway(gateway_pods[0])
        yield fleet
    finally:
        fleet.stop_operator()
        if fleet.kubelet is not None:
            fleet.kubelet.stop()  # before the containers stop: none is restarted
        for proc in [*fleet.runtimes.values(), *([fleet.gateway] if fleet.gateway else [])]:
            proc.stop()
        fleet.agent.remove_all()
        k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if mode == "containers":
            k.kubectl("delete", "pv", f"{ns}-{claim}", "--wait=false", check=False)
        print((fleet.tmp / "operator.log").read_text()[-4000:])


class Stream:
    """``threads`` clients calling a model through the gateway, each pausing ``pause``
    seconds between calls; each result is (when, HTTP status, the answering version
    or the error). A connection the gateway dropped counts as a failure (status 0)."""

    def __init__(
        self, fleet: Fleet, name: str, threads: int = 2, pause: float = 0.0, body: bytes = BODY
    ) -> None:
        self.fleet, self.name, self.pause, self.body = fleet, name, pause, body
        self.results: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = self.fleet.call(self.name, body=self.body)
            except OSError as exc:
                status, body = 0, repr(exc)
            self.results.append((time.monotonic(), status, body))
            if self.pause:
                self.stop.wait(self.pause)

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200 and r[0] >= since]
