"""The operator's contracts as a cluster user sees them: `kubectl explain` and the
API server's refusals name the field; each runtime pod starts from its durable
document (the ConfigMap entry it mounts) exactly as a kubelet would give it;
a runtime restarted while the operator is down serves again from that document;
events and conditions say what happened.

kwok pods run no containers, so for each pod this test starts a real runtime
(or gateway) process bound to the pod's loopback IP, from the ConfigMap content
the pod would mount; the operator runs unchanged (`python -m modelfleet operator`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.test_operator import wait_for
from tests.support.servers import ENV, Process

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
NS = "mf-life"
POOL = "life"
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}
).encode()


def model_yaml(name: str, pool: str = POOL, **spec: Any) -> str:
    body = {
        "pool": pool, "version": "1", "memoryMB": 300,
        "source": {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:mlp"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        **spec,
    }  # fmt: skip
    return yaml.safe_dump({"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferenceModel",
                           "metadata": {"name": name, "namespace": NS}, "spec": body})  # fmt: skip


def pool_yaml(name: str = POOL, **spec: Any) -> str:
    body = {"replicas": {"min": 2, "max": 2}, "memoryBudgetMB": 1000, **spec}
    return yaml.safe_dump({"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool",
                           "metadata": {"name": name, "namespace": NS}, "spec": body})  # fmt: skip


class Fleet:
    """The cluster, the operator process, and a process per kwok pod."""

    def __init__(self, cluster: Cluster, tmp: Path, store: Path) -> None:
        self.k, self.tmp, self.store = cluster, tmp, store
        self.operator: subprocess.Popen[bytes] | None = None
        self.runtimes: dict[str, Process] = {}
        self.gateway: Process | None = None
        self.token = tmp / "token"

    def start_operator(self) -> None:
        env = {**ENV, "KUBECONFIG": str(self.k.kubeconfig)}
        log = (self.tmp / "operator.log").open("a")
        self.operator = subprocess.Popen([sys.executable, "-m", "modelfleet", "operator", "--namespace", NS],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.kill()
            self.operator.wait(timeout=10)

    def json(self, *args: str) -> Any:
        return json.loads(self.k.kubectl(*args, "-n", NS, "-o", "json").stdout)

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={POOL},app.kubernetes.io/component={component}"
        items = self.json("get", "pods", "-l", selector)["items"]
        return [p for p in items if p["status"].get("podIP")]

    def config(self, suffix: str, key: str) -> dict[str, Any]:
        data = self.json("get", "configmap", f"{POOL}-{suffix}")["data"]
        return yaml.safe_load(data[key])  # type: ignore[no-any-return]

    def start_runtime(self, pod: dict[str, Any]) -> Process:
        """What the kubelet would run: `modelfleet serve --config state.yaml`, with the
        pod's own ConfigMap entry; the model store is where the test keeps the models."""
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        document = self.config("state", f"{name}.yaml")
        document["server"].update(
            host=ip, model_store=str(self.store), admin_token_file=str(self.token)
        )
        self.runtimes[name] = Process(self.tmp, "serve", "--config", document, ip)
        return self.runtimes[name]

    def start_gateway(self, pod: dict[str, Any]) -> None:
        document = self.config("routes", "routes.yaml")
        document["server"].update(host=pod["status"]["podIP"], admin_token_file=str(self.token))
        self.gateway = Process(self.tmp, "gateway", "--routes", document, pod["status"]["podIP"])

    def status(self, name: str) -> dict[str, Any]:
        return self.json("get", "inferencemodel", name).get("status") or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == kind)

    def infer(self, name: str) -> int:
        assert self.gateway is not None
        req = urllib.request.Request(f"{self.gateway.url}/v2/models/{name}/infer", data=BODY)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def hosted(self, pod: str) -> list[str]:
        """Model versions a runtime process reports (its admin API)."""
        ip = self.runtimes[pod].host
        req = urllib.request.Request(f"http://{ip}:8081/admin/state",
                                     headers={"Authorization": f"Bearer {self.token.read_text()}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            return [
                f"{m['name']}:{m['state']}" for m in json.loads(resp.read())["actual"]["models"]
            ]


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    k = kube_cluster
    for crd in ("inferencepool.yaml", "inferencemodel.yaml"):
        k.kubectl("apply", "-f", str(ROOT / "crds" / crd))
    for crd in ("inferencepools", "inferencemodels"):
        k.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}.modelfleet.io", "--timeout=30s"
        )
    k.kubectl("create", "namespace", NS, check=False)
    fleet = Fleet(k, tmp_path_factory.mktemp("life"), model_store)
    fleet.start_operator()
    try:
        k.kubectl("apply", "-f", "-", input=pool_yaml())
        runtime_pods = wait_for(
            "2 runtime pods with IPs",
            lambda: len(fleet.pods("runtime")) == 2 and fleet.pods("runtime"),
        )
        gateway_pods = wait_for("a gateway pod with an IP", lambda: fleet.pods("gateway"))
        secret = fleet.json("get", "secret", f"{POOL}-admin-token")
        fleet.token.write_bytes(base64.b64decode(secret["data"]["token"]))
        for pod in runtime_pods:
            fleet.start_runtime(pod)
        fleet.start_gateway(gateway_pods[0])
        yield fleet
    finally:
        fleet.stop_operator()
        for proc in [*fleet.runtimes.values(), *([fleet.gateway] if fleet.gateway else [])]:
            proc.stop()
        k.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        print((fleet.tmp / "operator.log").read_text()[-4000:])


def test_kubectl_explain_describes_the_fields(fleet: Fleet) -> None:
    out = fleet.k.kubectl("explain", "inferencemodel.spec.canary.weight").stdout
    assert "Percent (0-100) of the model's traffic sent to the canary" in out
    out = fleet.k.kubectl("explain", "inferencepool.spec.memoryBudgetMB").stdout
    assert "Placement never exceeds it" in " ".join(out.split())
    out = fleet.k.kubectl("explain", "inferencemodel.status.conditions").stdout
    assert "Ready, Placed, Degraded and Progressing" in out


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        (model_yaml("w", canary={"version": "2", "weight": 120, "source": {"path": "b.pt2"}}),
         "spec.canary.weight", "less than or equal to 100"),
        (model_yaml("b", batching={"maxBatchSize": 0}), "spec.batching.maxBatchSize", "greater than or equal to 1"),
        (model_yaml("c", canary={"version": "1", "source": {"path": "b.pt2"}}),
         "spec.canary.version", "canary.version must differ from version"),
        (model_yaml("t", source={"path": "m.ts", "format": "torchscript"}),
         "spec.source.trusted", "set source.trusted: true"),
        (model_yaml("u", source={"url": "https://example.com/m.pt2"}), "spec.source.sha256", "source.url needs source.sha256"),
        (model_yaml("a", source={"path": "m.safetensors"}), "spec.source.architecture", "architecture"),
        (model_yaml("9lives"), "metadata.name", "DNS label that starts with a letter"),
        (pool_yaml("p", replicas={"min": 3, "max": 2}), "spec.replicas.min", "replicas.min must not exceed replicas.max"),
    ],
    ids=["weight", "batch", "canary-version", "torchscript", "url-sha", "architecture", "name", "min-max"],
)  # fmt: skip
def test_apply_of_a_bad_resource_is_refused_with_the_field_named(
    fleet: Fleet, bad: str, field: str, says: str
) -> None:
    result = fleet.k.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0, f"accepted: {bad}"
    assert field in result.stderr and says in result.stderr, result.stderr


def test_a_model_is_placed_with_events_and_answers_through_the_gateway(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("alpha", replicas=2, priority=10))
    wait_for(
        "alpha Ready", lambda: fleet.condition("alpha", "Ready")["status"] == "True", timeout=120
    )
    assert wait_for("an answer", lambda: fleet.infer("alpha") == 200)
    status = fleet.status("alpha")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("True", "AllReplicasReady"), "Placed": ("True", "Placed"),
                          "Degraded": ("False", "AsExpected"), "Progressing": ("False", "Converged")}  # fmt: skip
    assert sorted(status["versions"][0]["pods"]) == sorted(fleet.runtimes)
    assert status["observedGeneration"] == 1
    events = fleet.json("get", "events", "--field-selector", "involvedObject.name=alpha")["items"]
    placed = [e["message"] for e in events if e["reason"] == "Placed"]
    assert len(placed) == 2 and all("version 1 (stable) placed on life-" in m for m in placed)
    pool = fleet.json("get", "inferencepool", POOL)["status"]
    assert pool["readyReplicas"] == 2 and pool["models"] == 1
    table = fleet.k.kubectl("get", "ipool", "-n", NS).stdout
    assert "MODELS" in table and POOL in table


def test_a_runtime_restarted_while_the_operator_is_down_serves_from_its_config_map(
    fleet: Fleet,
) -> None:
    pod = sorted(fleet.runtimes)[0]
    fleet.stop_operator()
    try:
        fleet.runtimes[pod].stop()
        runtime_pod = next(p for p in fleet.pods("runtime") if p["metadata"]["name"] == pod)
        fleet.start_runtime(runtime_pod)  # the document it mounts already lists alpha
        assert "alpha:ready" in fleet.hosted(pod)
        ip = fleet.runtimes[pod].host
        req = urllib.request.Request(
            f"http://{ip}:{fleet.runtimes[pod].port}/v2/models/alpha/infer", data=BODY
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        fleet.start_operator()
    assert wait_for(
        "alpha still Ready", lambda: fleet.condition("alpha", "Ready")["status"] == "True"
    )
    assert fleet.infer("alpha") == 200


def test_a_model_too_big_for_any_pod_is_degraded_while_others_serve(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("giant", memoryMB=4000))
    degraded = wait_for("giant Degraded",
                        lambda: (c := fleet.condition("giant", "Degraded"))["status"] == "True" and c)  # fmt: skip
    assert degraded["reason"] == "DoesNotFit" and "4000 MB" in degraded["message"]
    assert fleet.condition("giant", "Placed")["status"] == "False"
    assert fleet.infer("alpha") == 200
    fleet.k.kubectl("delete", "inferencemodel", "giant", "-n", NS)


def test_deleting_a_model_unloads_it_everywhere_and_removes_its_route(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("beta", replicas=2))
    wait_for(
        "beta Ready", lambda: fleet.condition("beta", "Ready")["status"] == "True", timeout=120
    )
    fleet.k.kubectl("delete", "inferencemodel", "beta", "-n", NS)
    for pod in fleet.runtimes:
        wait_for(
            f"beta unloaded from {pod}",
            lambda pod=pod: not any(m.startswith("beta:") for m in fleet.hosted(pod)),
        )
    wait_for("beta's route gone", lambda: fleet.infer("beta") == 404)
    documents = [fleet.config("state", f"{pod}.yaml") for pod in fleet.runtimes]
    assert all("beta" not in [m["name"] for m in d["models"]] for d in documents)
    assert fleet.infer("alpha") == 200
