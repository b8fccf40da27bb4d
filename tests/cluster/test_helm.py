"""The Helm chart installed into the real control plane, under the "restricted" Pod
Security Standard, and the operator run with the identity of the chart's ServiceAccount:
its RBAC is enough to reconcile a pool and a model, and no wider than that."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import CLAIM, STORE_CLAIM, Fleet, built_images, pods_mode
from tests.support.servers import ENV
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelfleet"
NS, OTHER = "mf-helm", "mf-helm-other"
RELEASE = "mf"
OPERATOR = f"{RELEASE}-modelfleet-operator"
SA = f"system:serviceaccount:{NS}:{OPERATOR}"
POOL = {
    "apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool",
    "metadata": {"name": "gpu", "namespace": NS},
    "spec": {"replicas": {"min": 1, "max": 1}, "memoryBudgetMB": 1000, "resources": {"gpu": 1}},
}  # fmt: skip


class Helm:
    """The built helm binary, with its config and cache in a temporary folder."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.env = {**cluster.env, **{f"HELM_{kind}_HOME": str(home / kind.lower())
                                      for kind in ("CACHE", "CONFIG", "DATA")}}  # fmt: skip

    def __call__(self, *args: str) -> str:
        result = subprocess.run([str(self.cluster.bin_dir / "helm"), *args], env=self.env,
                                capture_output=True, text=True, timeout=180)  # fmt: skip
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout


def get_json(k: Cluster, *args: str, namespace: str = NS) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        k.kubectl("get", *args, "-n", namespace, "-o", "json").stdout
    )
    return result


def exists(k: Cluster, *args: str) -> bool:
    return k.kubectl("get", *args, check=False).returncode == 0


def can_i(k: Cluster, verb: str, resource: str, namespace: str = NS) -> str:
    """``kubectl auth can-i`` as the operator's ServiceAccount: "yes" or "no"."""
    result = k.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", SA, check=False)
    return result.stdout.strip()


def service_account_kubeconfig(k: Cluster, path: Path) -> Path:
    """A kubeconfig for the chart's ServiceAccount: a token from ``kubectl create token``,
    the server and CA of the admin kubeconfig."""
    token = k.kubectl("create", "token", OPERATOR, "-n", NS, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(k.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }))  # fmt: skip
    return path


class Operator:
    """``python -m modelfleet operator`` on this machine, logged in as ``kubeconfig`` says."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings: dict[str, str] = {}
        """Environment the chart gives the operator container (set by the test)."""

    def start(self) -> None:
        env = {**ENV, **self.settings, "KUBECONFIG": str(self.kubeconfig)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet", "operator", "--namespace", NS],
            env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def release(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """``helm install`` into a namespace where the API server enforces "restricted"."""
    k = kube_cluster
    tmp = tmp_path_factory.mktemp("helm")
    for ns in (NS, OTHER):
        k.kubectl("create", "namespace", ns)
        k.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/enforce-version=v1.34")  # fmt: skip
    helm = Helm(k, tmp)
    fleets: list[Fleet] = []
    """The pools' runtime and gateway pods the tests run (containers, or processes)."""
    operator = Operator(tmp / "operator.kubeconfig", tmp / "operator.log")
    try:
        notes = helm("install", RELEASE, str(CHART), "-n", NS, "--wait", "--timeout", "90s")
        yield {"cluster": k, "helm": helm, "tmp": tmp, "fleets": fleets, "operator": operator,
               "notes": notes}  # fmt: skip
    finally:
        operator.stop()
        for fleet in fleets:
            for served in [*fleet.runtimes.values(), *([fleet.gateway] if fleet.gateway else [])]:
                served.stop()
            fleet.agent.remove_all()
        if pods_mode() == "containers":
            k.kubectl("delete", "pv", f"{NS}-{CLAIM}", "--wait=false", check=False)
        if operator.log.exists():
            print(operator.log.read_text(errors="replace")[-4000:])
        subprocess.run([str(k.bin_dir / "helm"), "uninstall", RELEASE, "-n", NS],
                       env=helm.env, capture_output=True)  # fmt: skip
        for ns in (NS, OTHER):
            k.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_install_creates_the_operator_deployment_and_its_rbac_under_restricted(
    release: dict[str, Any],
) -> None:
    k = release["cluster"]
    for crd in ("inferencepools", "inferencemodels"):
        k.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}.modelfleet.io", "--timeout=30s"
        )
    deployment = get_json(k, "deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["status"].get("readyReplicas") == 1
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == OPERATOR
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    for kind in ("serviceaccount", "role", "rolebinding", "secret"):
        name = f"{RELEASE}-modelfleet-admin-token" if kind == "secret" else OPERATOR
        assert exists(k, kind, name, "-n", NS), f"{kind}/{name} missing"
    for kind in ("clusterrole", "clusterrolebinding"):
        assert exists(k, kind, f"{OPERATOR}-discovery"), f"{kind}/{OPERATOR}-discovery missing"
    # The namespace label is live: the API server itself refuses a pod that breaks the profile.
    loose = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })  # fmt: skip
    notes = release["notes"]
    assert f"kubectl -n {NS} apply -f samples/model.yaml" in notes
    assert f"http://mlp.{NS}.svc/v2/models/mlp/infer" in notes
    refused = k.kubectl("apply", "-f", "-", input=loose, check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr


def test_the_operator_as_the_chart_service_account_reconciles_a_pool_and_a_model(
    release: dict[str, Any], model_store: Path
) -> None:
    k, tmp, operator = release["cluster"], release["tmp"], release["operator"]
    service_account_kubeconfig(k, operator.kubeconfig)
    # The chart's settings for the operator, as its container would get them.
    container = get_json(k, "deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    chart_token = base64.b64decode(
        get_json(k, "secret", f"{RELEASE}-modelfleet-admin-token")["data"]["token"]
    )
    (tmp / "chart-token").write_bytes(chart_token)
    operator.settings = {"MODELFLEET_RUNTIME_IMAGE": env["MODELFLEET_RUNTIME_IMAGE"],
                         "MODELFLEET_ADMIN_TOKEN_FILE": str(tmp / "chart-token")}  # fmt: skip
    operator.start()
    pool = POOL
    if pods_mode() == "containers":  # the pods run from the chart's image, the store a claim
        built_images()
        k.kubectl(
            "apply", "-f", "-", input=STORE_CLAIM.format(ns=NS, claim=CLAIM, store=model_store)
        )
        pool = {**POOL, "spec": {**POOL["spec"], "modelStore": {"claimName": CLAIM}}}
    k.kubectl("apply", "-f", "-", input=yaml.safe_dump(pool))
    children = ("statefulset/gpu", "deployment/gpu-gateway", "service/gpu-pods",
                "service/gpu-gateway", "configmap/gpu-state", "configmap/gpu-routes",
                "secret/gpu-admin-token", "poddisruptionbudget/gpu")  # fmt: skip
    wait_for("the pool's children", lambda: all(exists(k, c, "-n", NS) for c in children))

    statefulset = get_json(k, "statefulset", "gpu")["spec"]["template"]["spec"]
    assert statefulset["containers"][0]["image"] == env["MODELFLEET_RUNTIME_IMAGE"]
    assert env["MODELFLEET_RUNTIME_IMAGE"].startswith("modelfleet/runtime:")
    pool_token = base64.b64decode(get_json(k, "secret", "gpu-admin-token")["data"]["token"])
    assert pool_token == chart_token  # one token, chosen at install, opens the pool's admin API
    fleet = Fleet(k, tmp, model_store, NS, "gpu")
    release["fleets"].append(fleet)
    fleet.token.write_bytes(pool_token)
    fleet.start_runtime(wait_for("the runtime pod's IP", lambda: fleet.pods("runtime"))[0])
    fleet.start_gateway(wait_for("the gateway pod's IP", lambda: fleet.pods("gateway"))[0])
    model = yaml.safe_load((ROOT / "samples" / "model.yaml").read_text())
    model["metadata"] = {"name": "alpha", "namespace": NS}
    model["spec"]["pool"] = "gpu"
    k.kubectl("apply", "-f", "-", input=yaml.safe_dump(model))

    def ready() -> bool:
        status = get_json(k, "inferencemodel", "alpha").get("status") or {}
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])

    wait_for("alpha Ready (its status written by the operator)", ready)
    assert exists(k, "service/alpha", "-n", NS)
    events = k.kubectl(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=alpha"
    ).stdout
    assert "Placed" in events  # the operator's events are allowed too
    log = operator.log.read_text(errors="replace")
    refused = re.findall(r".*(?:\b403: |Forbidden|Not enough permissions).*", log)
    assert refused == [], "\n".join(refused[:5])


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("delete", "secrets", NS),
        ("list", "secrets", NS),
        ("create", "pods", NS),
        ("delete", "pods", NS),
        ("delete", "inferencepools.modelfleet.io", NS),
        ("delete", "statefulsets.apps", NS),
        ("create", "priorityclasses.scheduling.k8s.io", NS),
        ("patch", "configmaps", OTHER),
        ("get", "secrets", OTHER),
        ("list", "inferencemodels.modelfleet.io", OTHER),
        ("patch", "clusterroles.rbac.authorization.k8s.io", NS),
        ("create", "rolebindings.rbac.authorization.k8s.io", NS),
    ],
)
def test_the_service_account_is_refused_what_the_operator_does_not_need(
    release: dict[str, Any], verb: str, resource: str, namespace: str
) -> None:
    assert can_i(release["cluster"], verb, resource, namespace) == "no"


def test_the_service_account_is_allowed_what_the_operator_uses(release: dict[str, Any]) -> None:
    k = release["cluster"]
    assert can_i(k, "patch", "inferencemodels.modelfleet.io/status") == "yes"
    assert can_i(k, "watch", "pods") == "yes"
    assert can_i(k, "list", "customresourcedefinitions.apiextensions.k8s.io") == "yes"


def test_helm_upgrade_with_a_new_log_level_rolls_the_operator(release: dict[str, Any]) -> None:
    k, helm = release["cluster"], release["helm"]
    token_before = get_json(k, "secret", f"{RELEASE}-modelfleet-admin-token")["data"]["token"]
    before = get_json(k, "deployment", OPERATOR)
    helm("upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values",
         "--set", "operator.logLevel=DEBUG", "--wait", "--timeout", "90s")  # fmt: skip
    after = get_json(k, "deployment", OPERATOR)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "--log-level",
        "DEBUG",
    ]
    selector = "app.kubernetes.io/instance=" + RELEASE + ",app.kubernetes.io/component=operator"
    sets = get_json(k, "replicasets", "-l", selector)["items"]
    assert len(sets) == 2, [s["metadata"]["name"] for s in sets]
    replicas = sorted(
        (s["metadata"]["annotations"]["deployment.kubernetes.io/revision"], s["spec"]["replicas"])
        for s in sets
    )
    assert replicas == [("1", 0), ("2", 1)]  # the new ReplicaSet runs, the old one is gone
    token_after = get_json(k, "secret", f"{RELEASE}-modelfleet-admin-token")["data"]["token"]
    assert token_after == token_before  # the generated admin token survives upgrades


def test_helm_uninstall_leaves_nothing_but_the_crds(release: dict[str, Any]) -> None:
    k, helm, operator = release["cluster"], release["helm"], release["operator"]
    # Pools and models first, while the operator runs to remove its finalizers.
    k.kubectl("delete", "inferencemodels,inferencepools", "--all", "-n", NS, "--timeout=60s")
    operator.stop()
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "90s")
    gone = [f"deployment/{OPERATOR}", f"serviceaccount/{OPERATOR}", f"role/{OPERATOR}",
            f"rolebinding/{OPERATOR}", f"secret/{RELEASE}-modelfleet-admin-token"]  # fmt: skip
    for name in gone:
        assert not exists(k, name, "-n", NS), f"{name} survived helm uninstall"
    for name in (f"clusterrole/{OPERATOR}-discovery", f"clusterrolebinding/{OPERATOR}-discovery"):
        assert not exists(k, name), f"{name} survived helm uninstall"
    left = k.kubectl("get", "all,configmaps,secrets,roles,rolebindings", "-n", NS,
                     "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout  # fmt: skip
    assert left.strip() == ""
    for crd in ("inferencepools", "inferencemodels"):
        assert exists(k, f"crd/{crd}.modelfleet.io"), f"the {crd} CRD went with the release"
