"""The Helm chart without a cluster: its CRDs are the top-level ones, `helm lint` is
clean, every rendered object is valid for Kubernetes 1.34 (ours against our CRDs),
every pod is "restricted" with a read-only root, the RBAC is commented and narrow,
and the values reach the objects (tests/operator/test_crdgen.py checks that the CRDs
and docs/reference.md are the generator's output)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ClusterError, build_binaries

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modelfleet"
SAMPLES = ROOT / "samples"
CRDS = ["inferencepool.yaml", "inferencemodel.yaml"]
KUBE_VERSION = "1.34.0"
VALUE_SETS = {
    "defaults": [],
    "default-pool": ["--set", "defaultPool.enabled=true", "--set", "defaultPool.modelStoreClaim=models",
                     "--set", "defaultPool.priorityClassName=gpu-high"],
    "all-namespaces": ["--set", "watch.allNamespaces=true"],
    "two-namespaces": ["--set", "watch.namespaces={team-a,team-b}"],
    "existing-secret": ["--set", "adminToken.existingSecret=my-token"],
    "no-token": ["--set", "adminToken.create=false"],
}  # fmt: skip
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return build_binaries() / "helm"
    except ClusterError as exc:
        pytest.fail(f"the chart tests need helm (built by tests/cluster/build.sh): {exc}")


def render(helm: Path, *values: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(helm), "template", "mf", str(CHART), "--namespace", "mf-system", "--include-crds",
         "--kube-version", KUBE_VERSION, *values],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def crd_schemas() -> dict[str, dict[str, Any]]:
    """kind -> the openAPIV3Schema of its served version, as JSON Schema (x-kubernetes-* dropped)."""

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    out = {}
    for name in CRDS:
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        out[crd["spec"]["names"]["kind"]] = plain(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])  # fmt: skip
    return out


def validate(obj: dict[str, Any]) -> None:
    """Kubernetes 1.34 schemas for built-in kinds; our CRD's schema for our own kinds."""
    import jsonschema
    import kubernetes_validate

    if obj["apiVersion"].startswith("modelfleet.io/"):
        # OpenAPI v3.0 schemas are JSON Schema draft 4 (a boolean exclusiveMinimum).
        jsonschema.Draft4Validator(crd_schemas()[obj["kind"]]).validate(obj)
    else:
        kubernetes_validate.validate(obj, "1.34", strict=True)


@pytest.mark.parametrize("name", CRDS)
def test_the_charts_crds_are_byte_identical_to_the_top_level_crds(name: str) -> None:
    chart_copy, source = CHART / "crds" / name, ROOT / "crds" / name
    assert chart_copy.read_bytes() == source.read_bytes(), (
        f"charts/modelfleet/crds/{name} drifted from crds/{name}: run make crds"
    )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(CRDS)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=list(VALUE_SETS))
def test_helm_lint_is_clean(helm: Path, values: list[str]) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--kube-version",
                             KUBE_VERSION, *values], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=list(VALUE_SETS))
def test_every_rendered_object_validates_against_kubernetes_1_34_or_our_crds(
    helm: Path, values: list[str]
) -> None:
    docs = render(helm, *values)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole"} <= kinds
    for doc in docs:
        validate(doc)


def test_the_samples_validate_against_kubernetes_1_34_and_our_crds() -> None:
    docs = [d for path in sorted(SAMPLES.glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]  # fmt: skip
    assert {d["kind"] for d in docs} >= {"InferencePool", "InferenceModel"}
    for doc in docs:
        validate(doc)


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))  # fmt: skip
        elif doc["kind"] == "Pod":
            out.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards "restricted" (v1.34) plus a read-only root and /tmp on an emptyDir."""
    bad = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(key)
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
               "projected", "secret"}  # fmt: skip
    for v in volumes.values():
        if not set(v) - {"name"} <= allowed:
            bad.append(f"volume {v['name']} is not an allowed type")
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            bad.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runs as root")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities must drop ALL")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: readOnlyRootFilesystem")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            bad.append(f"{name}: /tmp is not an emptyDir")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort")
    return bad


def test_every_pod_is_restricted_with_a_read_only_root(helm: Path) -> None:
    samples = [d for path in sorted(SAMPLES.glob("*.yaml"))
               for d in yaml.safe_load_all(path.read_text()) if d]  # fmt: skip
    checked = []
    for values in VALUE_SETS.values():
        for name, pod in pod_templates(render(helm, *values) + samples):
            assert restricted_violations(pod) == [], name
            checked.append(name)
    assert "Deployment/mf-modelfleet-operator" in checked and "Job/example-models" in checked


def test_the_restricted_check_catches_a_loose_pod() -> None:
    loose = {"containers": [{"name": "c", "securityContext": {"privileged": True}}],
             "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}  # fmt: skip
    found = " ".join(restricted_violations(loose))
    for word in ("allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile", "capabilities",
                 "readOnlyRootFilesystem", "/tmp", "volume h"):  # fmt: skip
        assert word in found


def rbac_sources(helm: Path) -> str:
    result = subprocess.run(
        [str(helm), "template", "mf", str(CHART), "-n", "mf-system", "--kube-version", KUBE_VERSION,
         "--set", "watch.allNamespaces=true", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout


def test_every_rbac_rule_has_a_comment_above_it(helm: Path) -> None:
    lines = rbac_sources(helm).splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= 10
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {lines[i]}"


def test_the_rbac_deletes_nothing_and_reads_no_secret_in_bulk(helm: Path) -> None:
    for values in VALUE_SETS.values():
        for doc in render(helm, *values):
            if doc["kind"] not in ("Role", "ClusterRole"):
                continue
            for rule in doc["rules"]:
                words = [*rule["verbs"], *rule["resources"], *rule["apiGroups"]]
                assert "*" not in words, rule
                assert not {"delete", "deletecollection", "update", "escalate", "bind"} & set(
                    rule["verbs"]
                ), rule
                if "secrets" in rule["resources"]:
                    assert not {"list", "watch"} & set(rule["verbs"]), rule
                if "pods" in rule["resources"]:
                    assert set(rule["verbs"]) <= {"list", "watch"}, rule


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_values_reach_the_objects(helm: Path) -> None:
    docs = render(helm, "--set", "operator.logLevel=DEBUG", "--set", "operator.image.tag=9.9",
                  "--set", "runtime.image.tag=8.8", "--set", "defaultPool.enabled=true",
                  "--set", "watch.namespaces={team-a,team-b}")  # fmt: skip
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "modelfleet/operator:9.9"
    assert container["args"] == ["--log-level", "DEBUG", "operator", "--metrics-port", "8080",
                                 "--namespace", "team-a", "--namespace", "team-b"]  # fmt: skip
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080}]
    (off,) = by_kind(render(helm, "--set", "operator.metricsPort=0"), "Deployment")
    quiet = off["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port" not in quiet["args"] and "ports" not in quiet
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELFLEET_RUNTIME_IMAGE"] == "modelfleet/runtime:8.8"
    assert env["MODELFLEET_ADMIN_TOKEN_FILE"] == "/var/run/modelfleet/admin-token/token"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/modelfleet/admin-token" in mounts
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == ["team-a", "team-b"]
    assert not [r for r in by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith("-discovery")]  # fmt: skip
    (pool,) = by_kind(docs, "InferencePool")
    assert "image" not in pool["spec"]  # the operator's default: the chart's runtime image
    assert pool["spec"]["runtime"] == {"executor": "thread"}
    cpu_pool = render(
        helm, "--set", "defaultPool.enabled=true", "--set", "defaultPool.executor=process"
    )
    assert by_kind(cpu_pool, "InferencePool")[0]["spec"]["runtime"] == {"executor": "process"}
    wide = render(helm, "--set", "watch.allNamespaces=true")
    (deployment,) = by_kind(wide, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][2:] == ["operator", "--metrics-port", "8080", "--all-namespaces"]  # fmt: skip
    assert by_kind(wide, "Role") == [] and len(by_kind(wide, "ClusterRole")) == 2
    assert by_kind(render(helm), "InferencePool") == []  # the default pool is opt-in


def test_our_own_kinds_are_held_to_our_crd_schema() -> None:
    import jsonschema

    model = yaml.safe_load((SAMPLES / "model.yaml").read_text())
    del model["spec"]["pool"]
    with pytest.raises(jsonschema.ValidationError, match="'pool' is a required property"):
        validate(model)
    pool = yaml.safe_load((SAMPLES / "pool.yaml").read_text())
    pool["spec"]["replicas"]["min"] = 0
    with pytest.raises(jsonschema.ValidationError, match="less than the minimum"):
        validate(pool)


def test_a_wrong_value_is_refused_by_the_values_schema(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "template", "mf", str(CHART), "--kube-version", KUBE_VERSION,
         "--set", "operator.logLevel=LOUD"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "logLevel" in result.stderr, result.stderr
