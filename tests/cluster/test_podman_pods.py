"""The podman node agent: its translation of a pod into ``podman run``, on the pods
the operator's own templates make (no cluster and no podman needed), and one pod of
the test cluster run by it in podman (a cluster test)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.operator.manifests import (
    ROUTES_PATH,
    STATE_PATH,
    TOKEN_DIR,
    TOKEN_KEY,
    Owner,
    gateway_deployment,
    runtime_statefulset,
)
from modelfleet.operator.reconcile import state_file
from modelfleet.operator.settings import runtime_image
from modelfleet.operator.spec import PoolSpec
from tests.cluster.conftest import Cluster
from tests.cluster.podman_pods import (
    Objects,
    PodmanAgent,
    PodRun,
    PodStartError,
    Untranslatable,
    bind_to_pod_ip,
    container_of,
    readiness_url,
    translate,
)
from tests.containers.conftest import BUILD_TIMEOUT_S, Images, build_images, example_models, mlp
from tests.support.waiting import wait_for

OWNER = Owner("InferencePool", "gpu", "ml", "uid-gpu")
POD_IP = "127.77.0.5"
STATE = "server:\n  host: 0.0.0.0\n  port: 8080\nmodels: []\n"


def pool_spec(**overrides: Any) -> PoolSpec:
    spec = {"replicas": {"min": 2, "max": 2}, "resources": {"gpu": 1, "cpu": "2", "memory": "8Gi"},
            "memoryBudgetMB": 2000, "modelStore": {"claimName": "models"}}  # fmt: skip
    return PoolSpec.model_validate({**spec, **overrides})


def pod_of(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """The pod the StatefulSet or ReplicaSet controller makes from the template, as
    the API server returns it once scheduled."""
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**template["metadata"], "name": name, "namespace": "ml", "uid": f"uid-{name}"},
        "spec": {**template["spec"], "nodeName": "gpu-node-0"},
        "status": {"podIP": POD_IP, "hostIP": "127.0.0.1"},
    }  # fmt: skip


def objects(store: Path) -> Objects:
    return Objects(
        configmaps={"gpu-state": {"gpu-0.yaml": STATE, "gpu-1.yaml": "other pod\n"},
                    "gpu-routes": {"routes.yaml": STATE}},
        secrets={"gpu-admin-token": {TOKEN_KEY: b"s3cret"}},
        claims={"models": store},
    )  # fmt: skip


def volume_flags(run: PodRun) -> dict[str, tuple[Path, str]]:
    """Container path -> (host path, ro|rw), from the ``--volume`` flags."""
    flags = {}
    for flag, value in pairwise(run.argv):
        if flag == "--volume":
            host, target, mode = value.split(":")
            flags[target] = (Path(host), mode)
    return flags


def after(argv: list[str], flag: str) -> list[str]:
    return [value for f, value in pairwise(argv) if f == flag]


@pytest.fixture
def runtime_run(tmp_path: Path) -> PodRun:
    pod = pod_of(runtime_statefulset(OWNER, pool_spec()), "gpu-0")
    return translate(
        pod, objects(tmp_path / "store"), tmp_path / "pods", adjust=bind_to_pod_ip(pod)
    )


def test_the_runtime_pod_runs_its_image_and_command_with_the_pods_name_in_its_env(
    runtime_run: PodRun,
) -> None:
    argv = runtime_run.argv
    image_at = argv.index(runtime_image())
    assert after(argv, "--entrypoint") == ['["modelfleet"]']
    assert argv[image_at + 1 :] == ["serve", "--config", STATE_PATH]
    assert "POD_NAME=gpu-0" in after(argv, "--env")
    assert after(argv, "--hostname") == ["gpu-0"]
    assert "--network=host" in argv and "--detach" in argv
    assert runtime_run.name == "ml.gpu-0.runtime"


def test_the_runtime_pod_keeps_its_restricted_security_context(runtime_run: PodRun) -> None:
    argv = runtime_run.argv
    assert after(argv, "--user") == ["65532:65532"]
    assert after(argv, "--group-add") == ["65532"]  # fsGroup
    assert "--read-only" in argv and "--read-only-tmpfs=false" in argv
    assert "--cap-drop=ALL" in argv and "--security-opt=no-new-privileges" in argv


def test_the_runtime_pod_mounts_its_own_state_key_the_token_tmp_and_the_model_store(
    runtime_run: PodRun, tmp_path: Path
) -> None:
    mounts = volume_flags(runtime_run)
    assert set(mounts) == {STATE_PATH, TOKEN_DIR, "/tmp", "/models"}
    state, mode = mounts[STATE_PATH]
    assert (state.name, mode) == ("gpu-0.yaml", "ro")  # subPathExpr $(POD_NAME).yaml
    runtime_run.materialise()
    document = yaml.safe_load(state.read_text())
    assert document["server"] == {"host": POD_IP, "port": 8080}  # bound to the pod's IP
    token, mode = mounts[TOKEN_DIR]
    assert ((token / TOKEN_KEY).read_bytes(), mode) == (b"s3cret", "ro")
    scratch, mode = mounts["/tmp"]
    assert mode == "rw" and runtime_run.folders[scratch] == (65532, 65532)
    assert mounts["/models"] == (tmp_path / "store", "ro")


def test_the_runtime_pod_stops_after_its_pre_stop_sleep_within_its_grace_period(
    runtime_run: PodRun,
) -> None:
    assert runtime_run.pre_stop_sleep_s == 5
    assert runtime_run.stop_argv() == ["podman", "stop", "--time", "40", "ml.gpu-0.runtime"]


def test_the_gateway_pod_mounts_the_whole_routes_config_map(tmp_path: Path) -> None:
    pod = pod_of(gateway_deployment(OWNER, pool_spec()), "gpu-gateway-abc12")
    run = translate(pod, objects(tmp_path), tmp_path / "pods", adjust=bind_to_pod_ip(pod))
    folder, mode = volume_flags(run)["/etc/modelfleet"]
    run.materialise()
    assert mode == "ro" and folder / "routes.yaml" == folder / Path(ROUTES_PATH).name
    assert yaml.safe_load((folder / "routes.yaml").read_text())["server"]["host"] == POD_IP
    assert run.argv[-3:] == ["gateway", "--routes", ROUTES_PATH]


def test_downward_api_and_references_expand_in_env_command_and_args(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"containers": [{
            "name": "c", "image": "img", "command": ["run", "--ip=$(IP)"],
            "args": ["$(NAME)", "$$(NAME)", "$(UNKNOWN)"],
            "env": [
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "ADDR", "value": "$(IP):8080"},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        }]},
        "status": {"podIP": "127.77.0.9"},
    }  # fmt: skip
    given = Objects(configmaps={"cm": {"a": "1"}}, secrets={"s": {"k": b"v"}})
    run = translate(pod, given, tmp_path)
    assert after(run.argv, "--env") == [
        "CM_a=1", "IP=127.77.0.9", "NAME=p", "APP=x", "ADDR=127.77.0.9:8080", "KEY=v",
    ]  # fmt: skip
    assert run.argv[run.argv.index("img") + 1 :] == [
        "--ip=127.77.0.9",
        "p",
        "$(NAME)",
        "$(UNKNOWN)",
    ]


def test_what_the_agent_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    pod = pod_of(runtime_statefulset(OWNER, pool_spec()), "gpu-0")
    with pytest.raises(Untranslatable, match="PersistentVolumeClaim 'models' was not given"):
        translate(pod, Objects(configmaps=objects(tmp_path).configmaps,
                               secrets=objects(tmp_path).secrets), tmp_path)  # fmt: skip
    pod["spec"]["volumes"].append({"name": "extra", "nfs": {"server": "n", "path": "/"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "extra", "mountPath": "/x"})
    with pytest.raises(Untranslatable, match="'extra': nfs volumes are not supported"):
        translate(pod, objects(tmp_path), tmp_path)
    pod["spec"]["volumes"][-1] = {"name": "extra", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}  # fmt: skip
    with pytest.raises(Untranslatable, match="ServiceAccount token for audience 'vault'"):
        translate(pod, objects(tmp_path), tmp_path)
    del pod["status"]["podIP"]
    with pytest.raises(Untranslatable, match="no IP yet"):
        translate(pod, objects(tmp_path), tmp_path)


def test_the_service_account_volume_and_the_api_server_reach_the_container(
    tmp_path: Path,
) -> None:
    """The projected volume the API server adds for a ServiceAccount token (token,
    CA bundle, namespace) becomes read-only files; the kubelet's KUBERNETES_SERVICE_*
    variables name the API server."""
    pod = {
        "metadata": {"name": "op", "namespace": "ns", "uid": "u"},
        "spec": {
            "serviceAccountName": "sa",
            "containers": [{"name": "c", "image": "img", "env": [{"name": "A", "value": "1"}],
                            "volumeMounts": [{"name": "kube-api-access-x", "readOnly": True,
                                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]}}],
        },
        "status": {"podIP": "127.77.0.9"},
    }  # fmt: skip
    given = Objects(configmaps={"kube-root-ca.crt": {"ca.crt": "PEM"}}, tokens={"": b"jwt"},
                    api_server=("127.0.0.1", 6443))  # fmt: skip
    run = translate(pod, given, tmp_path)
    run.materialise()
    folder = tmp_path / "op" / "kube-api-access-x"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        "token": b"jwt", "ca.crt": b"PEM", "namespace": b"ns"}  # fmt: skip
    assert f"{folder}:/var/run/secrets/kubernetes.io/serviceaccount:ro" in run.argv
    assert after(run.argv, "--env") == [
        "KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=6443",
        "KUBERNETES_SERVICE_PORT_HTTPS=6443", "A=1",
    ]  # fmt: skip


def test_the_readiness_probe_is_the_pods_named_port_and_path_at_its_ip() -> None:
    pod = pod_of(runtime_statefulset(OWNER, pool_spec()), "gpu-0")
    container: dict[str, Any] = pod["spec"]["containers"][0]
    assert container_of(pod) == container
    assert readiness_url(pod, container) == f"http://{POD_IP}:8080/v2/health/ready"
    container["readinessProbe"]["httpGet"]["port"] = "metrics"
    with pytest.raises(PodStartError, match="port 'metrics' names no port of runtime"):
        readiness_url(pod, container)
    container["readinessProbe"] = {"exec": {"command": ["true"]}}
    with pytest.raises(PodStartError, match=r"readinessProbe \['exec'\] is not run"):
        readiness_url(pod, container)


PV_AND_CLAIM = """
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}-models}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  hostPath: {{path: {store}}}
  claimRef: {{namespace: {ns}, name: models}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: models, namespace: {ns}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {ns}-models
  resources: {{requests: {{storage: 1Gi}}}}
"""


@pytest.fixture(scope="module")
def images() -> Images:
    """Both images, built by `make images` (tests/containers/conftest.py)."""
    return build_images()


@pytest.mark.cluster
@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)  # the images are built first if need be
def test_a_runtime_pod_from_the_api_server_runs_in_podman_and_serves_at_its_ip(
    kube_cluster: Cluster, images: Images, tmp_path: Path
) -> None:
    """The operator's StatefulSet, applied to the test cluster: its pod, scheduled by
    the real kube-scheduler (once its claim is bound) and given an IP by kwok, is run
    by the agent from what the API server returns, and serves the MLP at that IP."""
    ns = f"podman-{os.getpid()}"
    store = example_models(tmp_path / "store")
    spec = pool_spec(replicas={"min": 1, "max": 1}, resources={"cpu": "1", "memory": "2Gi"},
                     memoryBudgetMB=1024, image=images.runtime)  # fmt: skip
    statefulset = runtime_statefulset(Owner("InferencePool", "demo", ns, "uid-demo"), spec)
    del statefulset["metadata"]["ownerReferences"]  # no InferencePool here to own it
    token = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-admin-token"},
             "stringData": {TOKEN_KEY: "s3cret"}}  # fmt: skip
    state = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-state"},
             "data": {"demo-0.yaml": state_file(spec, [mlp()])}}  # fmt: skip
    agent = PodmanAgent(kube_cluster.kubectl, tmp_path / "pods", claims={"models": store})
    kube_cluster.kubectl("create", "namespace", ns)
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=PV_AND_CLAIM.format(ns=ns, store=store))
        for manifest in (token, state, statefulset):
            kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))

        def scheduled() -> dict[str, Any]:
            pod = json.loads(
                kube_cluster.kubectl("get", "pod", "demo-0", "-n", ns, "-o", "json").stdout
            )
            assert pod["status"].get("podIP"), pod["status"]
            return pod  # type: ignore[no-any-return]

        pod = wait_for("pod demo-0 scheduled with an IP", scheduled, timeout=120)
        run = agent.start(pod, adjust=bind_to_pod_ip(pod))
        url = f"http://{pod['status']['podIP']}:8080"
        wait_for("the runtime pod ready at its IP", lambda: _status(f"{url}/v2/health/ready") == 200,
                 timeout=180)  # fmt: skip
        body = {
            "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]
        }
        req = urllib.request.Request(f"{url}/v2/models/mlp/infer", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["outputs"][0]["shape"] == [1, 4]
        code = agent.stop(run, pre_stop=False)
        assert code == 0, agent.logs(run)[-4000:]
        logs = agent.logs(run)
        assert f"listening on {url}" in logs and "draining" in logs, logs[-4000:]
    finally:
        agent.remove_all()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kube_cluster.kubectl("delete", "pv", f"{ns}-models", "--wait=false", check=False)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
