"""The children of an InferencePool and an InferenceModel, as pure data."""

from __future__ import annotations

from typing import Any

from modelfleet.operator.spec import API_VERSION, PoolSpec

DATA_PORT, ADMIN_PORT = 8080, 8081
DRAIN_GRACE_S = 30
TOKEN_KEY = "token"


def labels(pool: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelfleet",
        "app.kubernetes.io/instance": pool,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "modelfleet-operator",
    }


def owner(obj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    return [{"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj["kind"], "name": meta["name"],
             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]  # fmt: skip


def _meta(name: str, namespace: str, pool_obj: dict[str, Any], component: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(pool_obj["metadata"]["name"], component),
            "ownerReferences": owner(pool_obj)}  # fmt: skip


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
    "fsGroup": 65532,
}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": DATA_PORT}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 2}  # fmt: skip


def pool_children(pool_obj: dict[str, Any]) -> list[dict[str, Any]]:
    """StatefulSet of runtime pods, headless Service, gateway Deployment and Service,
    PodDisruptionBudget and the ConfigMaps, all owned by the pool."""
    name, namespace = pool_obj["metadata"]["name"], pool_obj["metadata"]["namespace"]
    spec = PoolSpec.model_validate(pool_obj.get("spec") or {})
    runtime_labels = labels(name, "runtime")
    gateway_labels = labels(name, "gateway")
    limits: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpu:
        limits["nvidia.com/gpu"] = spec.resources.gpu
    volumes: list[dict[str, Any]] = [
        {"name": "state", "configMap": {"name": f"{name}-state", "optional": True}},
        {"name": "token", "secret": {"secretName": f"{name}-admin-token"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "state", "mountPath": "/etc/modelfleet", "readOnly": True},
        {"name": "token", "mountPath": "/var/run/modelfleet", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.model_store.get("claimName"):
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {
                    "claimName": spec.model_store["claimName"],
                    "readOnly": True,
                },
            }
        )
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": RESTRICTED_POD,
        "terminationGracePeriodSeconds": DRAIN_GRACE_S + 5,
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "volumes": volumes,
        "containers": [{
            "name": "runtime",
            "image": spec.image,
            "args": ["serve", "--config", "/etc/modelfleet/$(POD_NAME).yaml", "--host", "0.0.0.0",
                     "--admin-token-file", f"/var/run/modelfleet/{TOKEN_KEY}"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": DATA_PORT}, {"name": "admin", "containerPort": ADMIN_PORT}],
            "resources": {"requests": limits, "limits": limits},
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": mounts,
            "startupProbe": _probe("/v2/health/live", 2, 150),
            "livenessProbe": _probe("/v2/health/live", 10, 3),
            "readinessProbe": _probe("/v2/health/ready", 2, 2),
            # The runtime drains on SIGTERM; the pause lets endpoints update first.
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        }],
    }  # fmt: skip
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(name, namespace, pool_obj, "runtime"),
        "spec": {"serviceName": f"{name}-pods", "replicas": spec.replicas.min,
                 "podManagementPolicy": "Parallel", "selector": {"matchLabels": runtime_labels},
                 "template": {"metadata": {"labels": runtime_labels}, "spec": pod_spec}},
    }  # fmt: skip
    headless = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(f"{name}-pods", namespace, pool_obj, "runtime"),
        "spec": {"clusterIP": "None", "selector": runtime_labels, "publishNotReadyAddresses": True,
                 "ports": [{"name": "http", "port": DATA_PORT}, {"name": "admin", "port": ADMIN_PORT}]},
    }  # fmt: skip
    gateway_pod = {
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "securityContext": RESTRICTED_POD, "terminationGracePeriodSeconds": DRAIN_GRACE_S,
        "volumes": [{"name": "routes", "configMap": {"name": f"{name}-routes", "optional": True}},
                    {"name": "token", "secret": {"secretName": f"{name}-admin-token"}},
                    {"name": "tmp", "emptyDir": {}}],
        "containers": [{
            "name": "gateway", "image": spec.image,
            "args": ["gateway", "--routes", "/etc/modelfleet/routes.yaml", "--host", "0.0.0.0",
                     "--admin-token-file", f"/var/run/modelfleet/{TOKEN_KEY}"],
            "ports": [{"name": "http", "containerPort": DATA_PORT}, {"name": "admin", "containerPort": ADMIN_PORT}],
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [{"name": "routes", "mountPath": "/etc/modelfleet", "readOnly": True},
                             {"name": "token", "mountPath": "/var/run/modelfleet", "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "readinessProbe": _probe("/v2/health/ready", 2, 2),
            "livenessProbe": _probe("/v2/health/live", 10, 3),
        }],
    }  # fmt: skip
    gateway = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(f"{name}-gateway", namespace, pool_obj, "gateway"),
        "spec": {"replicas": spec.gateway.replicas, "selector": {"matchLabels": gateway_labels},
                 "template": {"metadata": {"labels": gateway_labels}, "spec": gateway_pod}},
    }  # fmt: skip
    gateway_service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(f"{name}-gateway", namespace, pool_obj, "gateway"),
        "spec": {"selector": gateway_labels, "ports": [{"name": "http", "port": 80, "targetPort": DATA_PORT}]},
    }  # fmt: skip
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, pool_obj, "runtime"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": runtime_labels}},
    }  # fmt: skip
    return [statefulset, headless, gateway, gateway_service, pdb]


def config_map(pool_obj: dict[str, Any], suffix: str, data: dict[str, str]) -> dict[str, Any]:
    """The durable copy of the desired state (per pod) or of the routes."""
    name, namespace = pool_obj["metadata"]["name"], pool_obj["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(f"{name}-{suffix}", namespace, pool_obj, suffix), "data": data}  # fmt: skip


def token_secret(pool_obj: dict[str, Any], token: str) -> dict[str, Any]:
    name, namespace = pool_obj["metadata"]["name"], pool_obj["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(f"{name}-admin-token", namespace, pool_obj, "runtime"),
            "stringData": {TOKEN_KEY: token}}  # fmt: skip


def model_service(model_obj: dict[str, Any], pool: str) -> dict[str, Any]:
    """``http://<model>.<namespace>.svc/v2/models/<model>/infer`` reaches the pool's gateway."""
    meta = model_obj["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": labels(pool, "model"), "ownerReferences": owner(model_obj)},
        "spec": {"selector": labels(pool, "gateway"), "ports": [{"name": "http", "port": 80, "targetPort": DATA_PORT}]},
    }  # fmt: skip
