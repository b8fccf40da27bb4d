"""The runtime image run as the operator's StatefulSet runs it: the pod the
operator's template makes, with the state document the operator writes into its
ConfigMap, turned into ``podman run`` by the test cluster's podman agent
(tests/cluster/podman_pods.py): read-only root, user 65532, the pod's volumes only
(its state key, the admin token Secret, the /tmp emptyDir, the model store). It
serves the example MLP over OIP REST and drains on SIGTERM with exit code 0; the
gateway pod, from the same image, routes to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelfleet.api.routes import ModelRoute, VersionRoute
from modelfleet.operator.manifests import (
    ADMIN_PORT,
    DATA_PORT,
    GRPC_PORT,
    TOKEN_KEY,
    Owner,
    gateway_deployment,
    runtime_statefulset,
)
from modelfleet.operator.reconcile import routes_file, state_file
from modelfleet.operator.spec import PoolSpec
from tests.cluster.podman_pods import Objects, PodRun, bind_to_pod_ip, translate
from tests.containers.conftest import BUILD_TIMEOUT_S, Images, example_models, mlp, podman
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    # The first test builds the images (scripts/images.sh): minutes on a fresh machine.
    pytest.mark.timeout(BUILD_TIMEOUT_S + 300),
]

POD_IP = f"127.0.77.{os.getpid() % 250 + 2}"
"""The pod's IP: a loopback address of these tests' own (other tests bind 127.0.0.1
and 127.1.x; the test cluster's pods 127.X.0.0/16 with X random)."""
GATEWAY_IP = f"127.0.78.{os.getpid() % 250 + 2}"
"""The gateway pod's IP."""
TOKEN = "container-test-token"


@dataclass
class Pod:
    run: PodRun
    url: str
    admin_url: str

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.run.name], capture_output=True, text=True)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models (the model store's claim)."""
    return example_models(tmp_path_factory.mktemp("store"))


def pool(image: str) -> PoolSpec:
    """A one-pod CPU pool with a model store, running ``image``."""
    return PoolSpec.model_validate({
        "replicas": {"min": 1, "max": 1}, "resources": {"cpu": "2", "memory": "4Gi"},
        "memoryBudgetMB": 1024, "modelStore": {"claimName": "models"}, "image": image,
    })  # fmt: skip


OWNER = Owner("InferencePool", "demo", "ml", "uid-demo")


def pod_of(workload: dict[str, Any], name: str, ip: str) -> dict[str, Any]:
    """The pod the workload's controller makes, as the API server returns it once it
    has an IP."""
    template = workload["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "spec": template["spec"], "status": {"podIP": ip},
    }  # fmt: skip


def runtime_pod(spec: PoolSpec) -> dict[str, Any]:
    """Pod ``demo-0`` of the operator's runtime StatefulSet for the pool."""
    return pod_of(runtime_statefulset(OWNER, spec), "demo-0", POD_IP)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the runtime binds
        try:
            s.bind((POD_IP, port))
        except OSError:
            return False
    return True


@pytest.fixture
def runtime(images: Images, model_store: Path, tmp_path: Path) -> Iterator[Pod]:
    """The runtime pod running in podman, ready."""
    assert all(_free(p) for p in (DATA_PORT, ADMIN_PORT, GRPC_PORT)), f"{POD_IP} is taken"
    spec = pool(images.runtime)
    pod = runtime_pod(spec)
    state = state_file(spec, [mlp()])  # what the operator writes into demo-state
    objects = Objects(
        configmaps={"demo-state": {"demo-0.yaml": state}},
        secrets={"demo-admin-token": {TOKEN_KEY: TOKEN.encode()}},
        claims={"models": model_store},
    )  # fmt: skip
    run = translate(pod, objects, tmp_path, adjust=bind_to_pod_ip(pod))
    run.materialise()
    podman("rm", "--force", "--time", "0", run.name, check=False)
    started = subprocess.run(run.argv, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, f"podman run failed: {started.stderr[-3000:]}"
    running = Pod(run, f"http://{POD_IP}:{DATA_PORT}", f"http://{POD_IP}:{ADMIN_PORT}")
    try:
        wait_for(
            "the runtime in the container to report ready",
            lambda: _get(f"{running.url}/v2/health/ready") == 200 or _exited(run.name),
            timeout=180,
        )
        assert not _exited(run.name), f"the container exited:\n{running.logs()[-4000:]}"
        yield running
    finally:
        podman("rm", "--force", "--time", "0", run.name, check=False)


def _get(url: str, token: str = "") -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _exited(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).strip()
    return state in ("exited", "stopped", "")


def infer(url: str, rows: list[list[float]]) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": [len(rows), 16], "datatype": "FP32",
                        "data": [x for row in rows for x in row]}]}  # fmt: skip
    req = urllib.request.Request(
        f"{url}/v2/models/mlp/infer", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_the_runtime_image_serves_the_example_mlp_as_the_operators_pod_runs_it(
    runtime: Pod, model_store: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    from modelfleet.runtime.examples import mlp as architecture

    rows = [[float(i + j) / 10 for j in range(16)] for i in range(3)]
    (output,) = infer(runtime.url, rows)["outputs"]
    assert (output["name"], output["shape"], output["datatype"]) == ("output", [3, 4], "FP32")
    module = architecture()
    module.load_state_dict(load_file(str(model_store / "mlp.safetensors")))
    with torch.inference_mode():
        expected = module(torch.tensor(rows)).flatten().tolist()
    assert output["data"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert f"listening on {runtime.url}" in runtime.logs()  # the pod's IP, not 0.0.0.0
    # The admin API checks the token of the mounted Secret.
    assert _get(f"{runtime.admin_url}/admin/state") == 401
    assert _get(f"{runtime.admin_url}/admin/state", TOKEN) == 200
    index = urllib.request.Request(
        f"{runtime.admin_url}/v2/repository/index", data=b"{}", method="POST",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    with urllib.request.urlopen(index, timeout=10) as resp:
        listed = json.loads(resp.read())
    assert [(m["name"], m["state"]) for m in listed] == [("mlp", "READY")]


def test_the_runtime_container_runs_as_65532_and_cannot_write_its_root_filesystem(
    runtime: Pod,
) -> None:
    done = subprocess.run(
        ["podman", "exec", runtime.run.name, "python", "-c",
         "import os; open('/tmp/ok', 'w').write('x'); print(os.getuid(), os.getgid());"
         " open('/opt/venv/x', 'w')"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == ["65532", "65532"], done.stderr[-2000:]
    assert "Read-only file system" in done.stderr, done.stderr[-2000:]


def test_the_runtime_container_drains_on_sigterm_and_exits_0(runtime: Pod) -> None:
    assert infer(runtime.url, [[0.0] * 16])["outputs"][0]["shape"] == [1, 4]
    started = time.monotonic()
    stopped = subprocess.run(runtime.run.stop_argv(), capture_output=True, text=True, timeout=90)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    took = time.monotonic() - started
    code = podman("inspect", "--format", "{{.State.ExitCode}}", runtime.run.name).strip()
    logs = runtime.logs()
    assert code == "0", f"exit code {code}:\n{logs[-4000:]}"
    assert "draining" in logs, logs[-4000:]
    assert took < runtime.run.grace_s, f"SIGTERM did not end it: stopped after {took:.1f} s"


def test_the_gateway_in_the_runtime_image_routes_to_the_runtime_pod(
    runtime: Pod, images: Images, tmp_path: Path
) -> None:
    """The operator's gateway Deployment pod, with the routes document the operator
    writes, run from the same image: a request to it is answered by the runtime pod."""
    spec = pool(images.runtime)
    pod = pod_of(gateway_deployment(OWNER, spec), "demo-gateway-7d9f-x2x4q", GATEWAY_IP)
    route = ModelRoute(versions=(VersionRoute(version="1", endpoints=(runtime.url,)),))
    objects = Objects(
        configmaps={"demo-routes": {"routes.yaml": routes_file({"mlp": route})}},
        secrets={"demo-admin-token": {TOKEN_KEY: TOKEN.encode()}},
    )  # fmt: skip
    run = translate(pod, objects, tmp_path, adjust=bind_to_pod_ip(pod))
    run.materialise()
    podman("rm", "--force", "--time", "0", run.name, check=False)
    started = subprocess.run(run.argv, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, f"podman run failed: {started.stderr[-3000:]}"
    gateway = Pod(run, f"http://{GATEWAY_IP}:{DATA_PORT}", f"http://{GATEWAY_IP}:{ADMIN_PORT}")
    try:
        wait_for(
            "the gateway in the container to report ready",
            lambda: _get(f"{gateway.url}/v2/health/ready") == 200 or _exited(run.name),
            timeout=120,
        )
        assert not _exited(run.name), f"the gateway exited:\n{gateway.logs()[-4000:]}"
        direct = infer(runtime.url, [[0.25] * 16])["outputs"][0]["data"]
        assert infer(gateway.url, [[0.25] * 16])["outputs"][0]["data"] == direct
        stopped = subprocess.run(run.stop_argv(), capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        code = podman("inspect", "--format", "{{.State.ExitCode}}", run.name).strip()
        assert code == "0", f"exit code {code}:\n{gateway.logs()[-4000:]}"
    finally:
        podman("rm", "--force", "--time", "0", run.name, check=False)
