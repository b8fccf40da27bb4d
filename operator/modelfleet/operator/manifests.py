"""The children of an InferencePool and an InferenceModel, as pure data.

Every child has a deterministic name and an owner reference to its resource,
so applying them again changes nothing and deleting the resource lets the
garbage collector remove them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.operator.settings import runtime_image
from modelfleet.operator.spec import API_VERSION, PoolSpec

DATA_PORT, ADMIN_PORT, GRPC_PORT = 8080, 8081, 8001
"""Pod ports: OIP REST and /metrics, admin, and OIP gRPC (Triton's usual 8001)."""
DRAIN_GRACE_S = 30
"""The runtime's ``drain_grace_s``: queued and in-flight work gets this long after SIGTERM."""
PRESTOP_S = 5
"""Before SIGTERM the pod waits this long, so the operator drops it from the routes
(a terminating pod leaves them in the next pass) and the gateways stop sending."""
TOKEN_KEY = "token"
TOKEN_DIR = "/var/run/modelfleet"
TOKEN_PATH = f"{TOKEN_DIR}/{TOKEN_KEY}"
STATE_PATH = "/etc/modelfleet/state.yaml"
ROUTES_PATH = "/etc/modelfleet/routes.yaml"
MANAGED_BY = "modelfleet-operator"
INSTANCE_LABEL = "app.kubernetes.io/instance"
"""The pool a pod belongs to."""
COMPONENT_LABEL = "app.kubernetes.io/component"
"""``runtime`` or ``gateway``."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The resource that owns the children (an InferencePool or an InferenceModel)."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Owner:
        meta = obj["metadata"]
        return cls(obj["kind"], meta["name"], meta["namespace"], meta.get("uid", ""))

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def labels(pool: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modelfleet",
        INSTANCE_LABEL: pool,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(pool: str, component: str) -> str:
    """A label selector (``k=v,...``) for a pool's pods of one component."""
    return ",".join(f"{k}={v}" for k, v in labels(pool, component).items())


def _meta(name: str, pool: Owner, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": pool.namespace, "labels": labels(pool.name, component),
            "ownerReferences": [pool.reference()]}  # fmt: skip


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
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 2}  # fmt: skip


def _ports() -> list[dict[str, Any]]:
    return [{"name": "http", "containerPort": DATA_PORT}, {"name": "admin", "containerPort": ADMIN_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT}]  # fmt: skip


def runtime_statefulset(pool: Owner, spec: PoolSpec, replicas: int | None = None) -> dict[str, Any]:
    """The runtime pods: restricted, read-only root, no API token, GPU requests,
    the pool's PriorityClass; each pod reads its own entry of the state ConfigMap.
    ``replicas``: the pods the pool runs now, brought within min..max (default min)."""
    bounds = spec.replicas
    count = bounds.min if replicas is None else min(max(replicas, bounds.min), bounds.max)
    pod_labels = labels(pool.name, "runtime")
    limits: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpu:
        limits["nvidia.com/gpu"] = spec.resources.gpu
    volumes: list[dict[str, Any]] = [
        {"name": "state", "configMap": {"name": f"{pool.name}-state"}},
        {"name": "token", "secret": {"secretName": f"{pool.name}-admin-token"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        # Each pod mounts its own key: <pod name>.yaml -> /etc/modelfleet/state.yaml.
        {"name": "state", "mountPath": STATE_PATH, "subPathExpr": "$(POD_NAME).yaml", "readOnly": True},
        {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]  # fmt: skip
    if spec.model_store.claim_name:
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": spec.model_store.claim_name, "readOnly": True}})  # fmt: skip
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    container = {
        "name": "runtime",
        "image": spec.image or runtime_image(),
        "command": ["modelfleet", "serve", "--config", STATE_PATH],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": _ports(),
        "resources": {"requests": limits, "limits": limits},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": mounts,
        # Loading and warming models can take minutes: the startup probe allows 5.
        "startupProbe": _probe("/v2/health/live", 2, 150),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 2, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": RESTRICTED_POD,
        # preStop, then SIGTERM and the runtime's drain, then a margin.
        "terminationGracePeriodSeconds": PRESTOP_S + DRAIN_GRACE_S + 5,
        "volumes": volumes,
        "containers": [container],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(pool.name, pool, "runtime"),
        "spec": {"serviceName": f"{pool.name}-pods", "replicas": count,
                 "podManagementPolicy": "Parallel", "selector": {"matchLabels": pod_labels},
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}},
    }  # fmt: skip


def runtime_headless_service(pool: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(f"{pool.name}-pods", pool, "runtime"),
        "spec": {"clusterIP": "None", "selector": labels(pool.name, "runtime"),
                 "publishNotReadyAddresses": True,
                 "ports": [{"name": "http", "port": DATA_PORT}, {"name": "admin", "port": ADMIN_PORT},
                           {"name": "grpc", "port": GRPC_PORT}]},
    }  # fmt: skip


def gateway_deployment(pool: Owner, spec: PoolSpec) -> dict[str, Any]:
    pod_labels = labels(pool.name, "gateway")
    container = {
        "name": "gateway", "image": spec.image or runtime_image(),
        "command": ["modelfleet", "gateway", "--routes", ROUTES_PATH],
        "ports": _ports(),
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "routes", "mountPath": "/etc/modelfleet", "readOnly": True},
                         {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "readinessProbe": _probe("/v2/health/ready", 2, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
    }  # fmt: skip
    pod_spec = {
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "securityContext": RESTRICTED_POD, "terminationGracePeriodSeconds": PRESTOP_S + DRAIN_GRACE_S,
        "volumes": [{"name": "routes", "configMap": {"name": f"{pool.name}-routes"}},
                    {"name": "token", "secret": {"secretName": f"{pool.name}-admin-token"}},
                    {"name": "tmp", "emptyDir": {}}],
        "containers": [container],
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(f"{pool.name}-gateway", pool, "gateway"),
        "spec": {"replicas": spec.gateway.replicas, "selector": {"matchLabels": pod_labels},
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}},
    }  # fmt: skip


def gateway_service(pool: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(f"{pool.name}-gateway", pool, "gateway"),
        "spec": {"selector": labels(pool.name, "gateway"),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"}]},
    }  # fmt: skip


def disruption_budget(pool: Owner) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take one runtime pod at a time."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(pool.name, pool, "runtime"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(pool.name, "runtime")}},
    }  # fmt: skip


def pool_children(pool: Owner, spec: PoolSpec, replicas: int | None = None) -> list[dict[str, Any]]:
    """StatefulSet of runtime pods, its headless Service, the gateway Deployment and
    Service, the PodDisruptionBudget, all owned by the pool. (The ConfigMaps and the
    token Secret are written by the convergence pass and the pool handler.)
    ``replicas``: the runtime pods the pool runs now (the operator's sizing keeps it
    within min..max), else min."""
    return [
        runtime_statefulset(pool, spec, replicas),
        runtime_headless_service(pool),
        gateway_deployment(pool, spec),
        gateway_service(pool),
        disruption_budget(pool),
    ]


def config_map(pool: Owner, suffix: str, data: dict[str, str]) -> dict[str, Any]:
    """The durable copy of the desired state (a key per pod) or of the routes."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(f"{pool.name}-{suffix}", pool, suffix), "data": data}  # fmt: skip


def token_secret(pool: Owner, token: str) -> dict[str, Any]:
    """The admin bearer token the runtimes and gateways check and the operator sends."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(f"{pool.name}-admin-token", pool, "runtime"),
            "stringData": {TOKEN_KEY: token}}  # fmt: skip


def model_service(model: Owner, pool: str) -> dict[str, Any]:
    """``http://<model>.<namespace>.svc/v2/models/<model>/infer`` and gRPC at
    ``<model>.<namespace>.svc:8001`` reach the pool's gateway."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": model.name, "namespace": model.namespace,
                     "labels": labels(pool, "model"), "ownerReferences": [model.reference()]},
        "spec": {"selector": labels(pool, "gateway"),
                 "ports": [{"name": "http", "port": 80, "targetPort": DATA_PORT},
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT}]},
    }  # fmt: skip
