"""Manifest builders: what a cluster admin and the pod security admission would check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfleet.operator.manifests import (
    PRESTOP_S,
    Owner,
    config_map,
    model_service,
    pool_children,
    token_secret,
)
from modelfleet.operator.settings import SettingsError, admin_token
from modelfleet.operator.spec import PoolSpec
from tests.operator.builders import model_obj, pool_obj

POOL = pool_obj()
OWNER = Owner.of(POOL)
SPEC = PoolSpec.model_validate(POOL["spec"])


def children() -> dict[str, dict[str, Any]]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in pool_children(OWNER, SPEC)}


def runtime_pod() -> dict[str, Any]:
    return children()["StatefulSet/gpu"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_runtime_pods_meet_the_restricted_profile_with_a_read_only_root() -> None:
    pod = runtime_pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}


def test_runtime_pods_carry_no_api_token_and_read_the_admin_token_from_a_secret() -> None:
    pod = runtime_pod()
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "gpu-admin-token"
    token = token_secret(OWNER, "s3cret")
    assert token["metadata"]["name"] == "gpu-admin-token" and token["stringData"] == {
        "token": "s3cret"
    }


def test_runtime_pods_request_gpus_and_use_the_pool_priority_class() -> None:
    pod = runtime_pod()
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert pod["priorityClassName"] == "ml-high"
    cpu_only = PoolSpec.model_validate({**POOL["spec"], "resources": {"gpu": 0}})
    sts = pool_children(OWNER, cpu_only)[0]
    assert (
        "nvidia.com/gpu"
        not in sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_runtime_pods_serve_their_own_state_file_and_drain_within_the_grace_period() -> None:
    pod = runtime_pod()
    container = pod["containers"][0]
    assert container["command"] == ["modelfleet", "serve", "--config", "/etc/modelfleet/state.yaml"]
    state = next(
        m for m in container["volumeMounts"] if m["mountPath"] == "/etc/modelfleet/state.yaml"
    )
    assert state["subPathExpr"] == "$(POD_NAME).yaml" and state["readOnly"] is True
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": PRESTOP_S}}
    # preStop, then the runtime's 30 s drain after SIGTERM, must fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_S + 30


def test_the_gateway_runs_from_the_routes_config_map_with_the_same_hardening() -> None:
    deployment = children()["Deployment/gpu-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [
        "modelfleet",
        "gateway",
        "--routes",
        "/etc/modelfleet/routes.yaml",
    ]
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"]: v for v in pod["volumes"]}["routes"]["configMap"]["name"] == "gpu-routes"
    service = children()["Service/gpu-gateway"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_every_child_is_owned_by_the_pool_so_deleting_it_removes_them() -> None:
    made = [*pool_children(OWNER, SPEC), config_map(OWNER, "state", {}), token_secret(OWNER, "t")]
    for child in made:
        ref = child["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool", "name": "gpu",
                       "uid": "uid-gpu", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    kinds = sorted(c["kind"] for c in pool_children(OWNER, SPEC))
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]


def test_the_model_service_is_named_after_the_model_and_reaches_the_pool_gateway() -> None:
    model = model_obj()
    service = model_service(Owner.of(model), "gpu")
    gateway = children()["Deployment/gpu-gateway"]
    assert service["metadata"]["name"] == "mlp"
    assert service["metadata"]["ownerReferences"][0]["kind"] == "InferenceModel"
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 80


def test_node_selector_and_tolerations_pass_through() -> None:
    spec = PoolSpec.model_validate({**POOL["spec"], "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]})  # fmt: skip
    pod = pool_children(OWNER, spec)[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def all_manifests() -> list[dict[str, Any]]:
    claim = PoolSpec.model_validate({**POOL["spec"], "modelStore": {"claimName": "models"}})
    return [
        *pool_children(OWNER, claim),
        config_map(OWNER, "state", {"gpu-0.yaml": "models: []\n"}),
        token_secret(OWNER, "t"),
        model_service(Owner.of(model_obj()), "gpu"),
    ]


@pytest.mark.parametrize(
    "manifest", all_manifests(), ids=lambda c: f"{c['kind']}/{c['metadata']['name']}"
)
def test_manifests_validate_against_the_kubernetes_1_34_schemas(manifest: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, "1.34", strict=True)


def test_the_runtime_image_defaults_to_the_operators_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = Owner.of(pool_obj())
    spec = PoolSpec.model_validate({k: v for k, v in pool_obj()["spec"].items() if k != "image"})
    images = lambda: {c["image"] for o in pool_children(owner, spec)  # noqa: E731
                      if o["kind"] in ("StatefulSet", "Deployment")
                      for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    monkeypatch.delenv("MODELFLEET_RUNTIME_IMAGE", raising=False)
    assert images() == {"modelfleet/runtime:0.1.0"}
    monkeypatch.setenv("MODELFLEET_RUNTIME_IMAGE", "registry.example/runtime:2.0")
    assert images() == {"registry.example/runtime:2.0"}
    named = spec.model_copy(update={"image": "mine/runtime:1"})
    assert {c["image"] for o in pool_children(owner, named) if o["kind"] == "StatefulSet"
            for c in o["spec"]["template"]["spec"]["containers"]} == {"mine/runtime:1"}  # fmt: skip


def test_the_admin_token_of_new_pools_comes_from_the_configured_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODELFLEET_ADMIN_TOKEN_FILE", raising=False)
    assert len(admin_token()) >= 32 and admin_token() != admin_token()
    token = tmp_path / "token"
    token.write_text("s3cret-s3cret-s3cret\n")
    monkeypatch.setenv("MODELFLEET_ADMIN_TOKEN_FILE", str(token))
    assert admin_token() == "s3cret-s3cret-s3cret"
    token.write_text("short")
    with pytest.raises(SettingsError, match="at least 16 characters"):
        admin_token()
    monkeypatch.setenv("MODELFLEET_ADMIN_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match="absent: No such file"):
        admin_token()
