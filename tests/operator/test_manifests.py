"""Manifest builders, the pool plan, the CRDs: pure data checked as a user would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.operator.manifests import model_service, pool_children
from modelfleet.operator.reconcile import PodView, plan, same_models
from modelfleet.operator.spec import ModelSpec, PoolSpec
from modelfleet.runtime.config import parse_document
from modelfleet.runtime.gateway.routes import parse_routes

ROOT = Path(__file__).resolve().parents[2]
POOL = {
    "apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool",
    "metadata": {"name": "gpu", "namespace": "ml", "uid": "uid-1"},
    "spec": {"replicas": {"min": 2, "max": 3}, "resources": {"gpu": 1, "cpu": "2", "memory": "8Gi"},
             "priorityClassName": "ml-high", "memoryBudgetMB": 2000},
}  # fmt: skip
MODEL_SPEC = {
    "pool": "gpu", "priority": 10, "version": "1", "replicas": 2,
    "source": {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:mlp"},
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 1}, "memoryMB": 500,
}  # fmt: skip


def children() -> dict[str, dict[str, Any]]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in pool_children(POOL)}


def test_pool_pods_are_restricted_read_only_tokenless_gpu_pods_with_probes() -> None:
    sts = children()["StatefulSet/gpu"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == "gpu-pods"
    assert pod["automountServiceAccountToken"] is False
    assert pod["priorityClassName"] == "ml-high"
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["terminationGracePeriodSeconds"] > 30
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_every_child_is_owned_by_the_pool() -> None:
    kinds = set()
    for key, child in children().items():
        kinds.add(child["kind"])
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "uid-1" and ref["controller"] is True, key
    assert kinds == {"StatefulSet", "Service", "Deployment", "PodDisruptionBudget"}


def test_model_service_selects_the_pool_gateway() -> None:
    model = {"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferenceModel",
             "metadata": {"name": "mlp", "namespace": "ml", "uid": "u2"}, "spec": MODEL_SPEC}  # fmt: skip
    svc = model_service(model, "gpu")
    gateway = children()["Deployment/gpu-gateway"]
    assert svc["metadata"]["name"] == "mlp"
    assert svc["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    "child", pool_children(POOL), ids=lambda c: f"{c['kind']}/{c['metadata']['name']}"
)
def test_children_validate_against_the_kubernetes_1_34_schemas(child: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(child, "1.34", strict=True)


def pod(name: str, ip: str, states: dict[tuple[str, str], str]) -> PodView:
    models = [
        {"name": n, "version": v, "state": s, "memory_mb": 100.0} for (n, v), s in states.items()
    ]
    return PodView(name, ip, {"actual": {"models": models}, "desired": {"models": []}})


def test_plan_places_replicas_and_routes_only_to_ready_endpoints() -> None:
    spec = ModelSpec.model_validate(MODEL_SPEC)
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}), pod("gpu-1", "127.1.0.3", {})]
    result = plan("gpu", PoolSpec.model_validate(POOL["spec"]), {"mlp": spec}, pods, 64)
    assert result.placement.pods_of[("mlp", "1")] == ["gpu-0", "gpu-1"]
    route = result.routes["mlp"]["versions"][0]
    assert route["endpoints"] == ["http://127.1.0.2:8080"]  # gpu-1 is not loaded yet
    assert result.model_status["mlp"]["readyReplicas"] == 1
    for docs in result.documents.values():  # what the operator pushes, the runtime accepts
        document = parse_document({"models": docs})
        assert document.models[0].batching.max_batch_size == 8
    parse_routes({"models": result.routes})
    assert same_models(
        [{**d, "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1, "eager": True}}
         for d in result.documents["gpu-0"]], result.documents["gpu-0"])  # fmt: skip


def test_plan_with_a_canary_splits_weights_and_reports_roles() -> None:
    spec = ModelSpec.model_validate({**MODEL_SPEC, "replicas": 1, "canary": {
        "version": "2", "weight": 25, "source": MODEL_SPEC["source"]}})  # fmt: skip
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "ready"})]
    result = plan("gpu", PoolSpec.model_validate(POOL["spec"]), {"mlp": spec}, pods, 64)
    weights = {v["version"]: v["weight"] for v in result.routes["mlp"]["versions"]}
    assert weights == {"1": 75, "2": 25}
    roles = {v["version"]: v["role"] for v in result.model_status["mlp"]["versions"]}
    assert roles == {"1": "stable", "2": "canary"}


def load_crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / name).read_text())  # type: ignore[no-any-return]


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in schema or path.endswith(".status") else [path]
    for key, sub in schema.get("properties", {}).items():
        missing += _walk(sub, f"{path}.{key}")
    if "items" in schema and "properties" in schema["items"]:
        missing += _walk(schema["items"], f"{path}[]")
    return missing


@pytest.mark.parametrize("name", ["inferencepool.yaml", "inferencemodel.yaml"])
def test_every_crd_field_has_a_description_for_kubectl_explain(name: str) -> None:
    crd = load_crd(name)
    version = crd["spec"]["versions"][0]
    missing = _walk(version["schema"]["openAPIV3Schema"], "")
    assert not missing, missing
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]


def test_model_crd_has_the_cel_rules_and_printer_columns() -> None:
    version = load_crd("inferencemodel.yaml")["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "!has(self.canary) || self.canary.version != self.version" in rules
    canary = spec["properties"]["canary"]["properties"]["weight"]
    assert (canary["minimum"], canary["maximum"]) == (0, 100)
    assert spec["properties"]["batching"]["properties"]["maxBatchSize"]["minimum"] == 1
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Pool", "Version", "Canary", "Weight", "Ready", "Priority", "Age"]
