"""One level-triggered convergence pass for a pool.

Read (the pool, its models, its pods, each pod's actual state via the admin
API), compute (placement, each pod's desired document, routes) as pure data,
then write (push documents and routes, ConfigMaps, status once per pass).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml

from modelfleet.operator.kube import Kube
from modelfleet.operator.manifests import ADMIN_PORT, DATA_PORT, config_map, labels
from modelfleet.operator.placement import Demand, Placement, Pod, place
from modelfleet.operator.spec import (
    API_VERSION,
    DEFAULT_MEMORY_MB,
    ModelSpec,
    PoolSpec,
    runtime_model,
)

log = logging.getLogger("modelfleet.operator")


@dataclass
class PodView:
    name: str
    ip: str
    actual: dict[str, Any] | None = None
    """The runtime's /admin/state answer; None when unreachable."""

    def versions(self) -> dict[tuple[str, str], dict[str, Any]]:
        models = (self.actual or {}).get("actual", {}).get("models", [])
        return {(m["name"], m["version"]): m for m in models}


@dataclass
class Plan:
    """Everything one pass decided, as data (the unit tests' subject)."""

    placement: Placement
    documents: dict[str, list[dict[str, Any]]]
    routes: dict[str, Any]
    model_status: dict[str, dict[str, Any]] = field(default_factory=dict)


def version_keys(name: str, spec: ModelSpec) -> list[tuple[str, str, Any, int, int]]:
    """(version, role, source, replicas, weight) of a model's versions."""
    out = [
        (
            spec.version,
            "stable",
            spec.source,
            spec.replicas,
            100 - (spec.canary.weight if spec.canary else 0),
        )
    ]
    if spec.canary:
        out.append(
            (
                spec.canary.version,
                "canary",
                spec.canary.source,
                spec.canary.replicas,
                spec.canary.weight,
            )
        )
    return out


def plan(pool: str, pool_spec: PoolSpec, models: dict[str, ModelSpec], pods: list[PodView],
         max_concurrency: int) -> Plan:  # fmt: skip
    measured: dict[tuple[str, str], float] = {}
    current: dict[tuple[str, str], list[str]] = {}
    for pod in pods:
        for key, info in pod.versions().items():
            if info.get("state") in ("ready", "loading", "warming"):
                current.setdefault(key, []).append(pod.name)
            if info.get("memory_mb"):
                measured[key] = max(measured.get(key, 0.0), float(info["memory_mb"]))
    demands = []
    for name, spec in models.items():
        for version, _, _, replicas, _ in version_keys(name, spec):
            key = (name, version)
            memory = spec.memory_mb or measured.get(key) or DEFAULT_MEMORY_MB
            demands.append(Demand(key, spec.priority, replicas, memory))
    placement = place([Pod(p.name, pool_spec.memory_budget_mb) for p in pods], demands, current)
    documents: dict[str, list[dict[str, Any]]] = {p.name: [] for p in pods}
    for name, spec in models.items():
        for version, _, source, _, _ in version_keys(name, spec):
            for pod_name in placement.pods_of.get((name, version), []):
                documents[pod_name].append(runtime_model(name, spec, version, source))
    by_name = {p.name: p for p in pods}
    routes: dict[str, Any] = {}
    for name, spec in models.items():
        versions: list[dict[str, Any]] = []
        ready_total = 0
        version_status = []
        for version, role, _, _, weight in version_keys(name, spec):
            endpoints = [
                f"http://{by_name[pod].ip}:{DATA_PORT}"
                for pod in placement.pods_of.get((name, version), [])
                if by_name[pod].versions().get((name, version), {}).get("state") == "ready"
            ]
            versions.append(
                {"version": version, "weight": weight if endpoints else 0, "endpoints": endpoints}
            )
            if role == "stable":
                ready_total = len(endpoints)
            version_status.append({"version": version, "role": role, "weight": weight,
                                   "readyReplicas": len(endpoints), "endpoints": endpoints,
                                   "pods": placement.pods_of.get((name, version), [])})  # fmt: skip
        if sum(v["weight"] for v in versions) == 0 and any(v["endpoints"] for v in versions):
            for v in versions:  # keep serving whatever is ready rather than nothing
                v["weight"] = 1 if v["endpoints"] else 0
        routes[name] = {
            "priority": spec.priority,
            "max_concurrency": max_concurrency,
            "versions": versions,
        }
        failures = [
            info.get("reason", "")
            for pod in pods for (n, _), info in pod.versions().items()
            if n == name and info.get("state") == "failed"
        ]  # fmt: skip
        unplaced = {v: r for (n, v), r in placement.unplaced.items() if n == name}
        plan_status = {"readyReplicas": ready_total, "versions": version_status,
                       "failures": failures, "unplaced": unplaced}  # fmt: skip
        routes[name]["_status"] = plan_status
    result = Plan(placement, documents, {})
    for name, route in routes.items():
        result.model_status[name] = route.pop("_status")
        result.routes[name] = route
    return result


def conditions(status: dict[str, Any], spec: ModelSpec, generation: int) -> list[dict[str, Any]]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def cond(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": "True" if ok else "False", "reason": reason,
                "message": message, "lastTransitionTime": now, "observedGeneration": generation}  # fmt: skip

    unplaced, failures = status["unplaced"], status["failures"]
    ready = status["readyReplicas"] >= spec.replicas
    placed = not unplaced
    degraded_msg = "; ".join([*(f"version {v}: {r}" for v, r in unplaced.items()), *failures])
    return [
        cond("Ready", ready, "Serving" if ready else "NotReady",
             f"{status['readyReplicas']} of {spec.replicas} replicas ready"),
        cond("Placed", placed, "Placed" if placed else "Unplaced",
             "every version placed" if placed else degraded_msg),
        cond("Degraded", bool(unplaced or failures), "LoadFailed" if failures else ("Evicted" if unplaced else "None"),
             degraded_msg or "no problem seen"),
    ]  # fmt: skip


async def fetch_state(session: aiohttp.ClientSession, pod: PodView, token: str) -> None:
    try:
        async with session.get(f"http://{pod.ip}:{ADMIN_PORT}/admin/state",
                               headers={"Authorization": f"Bearer {token}"},
                               timeout=aiohttp.ClientTimeout(total=3)) as resp:  # fmt: skip
            pod.actual = await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        pod.actual = None


async def push(session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]) -> bool:
    try:
        async with session.put(url, json=body, headers={"Authorization": f"Bearer {token}"},
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:  # fmt: skip
            return resp.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False


async def converge(kube: Kube, session: aiohttp.ClientSession, pool_obj: dict[str, Any]) -> None:
    """One pass for one pool."""
    pool, namespace = pool_obj["metadata"]["name"], pool_obj["metadata"]["namespace"]
    pool_spec = PoolSpec.model_validate(pool_obj.get("spec") or {})
    secret = await kube.get("v1", "Secret", namespace, f"{pool}-admin-token")
    if secret is None:
        return
    import base64

    token = base64.b64decode(secret["data"]["token"]).decode()
    model_objs = [m for m in await kube.list(API_VERSION, "InferenceModel", namespace)
                  if m.get("spec", {}).get("pool") == pool and not m["metadata"].get("deletionTimestamp")]  # fmt: skip
    models = {m["metadata"]["name"]: ModelSpec.model_validate(m["spec"]) for m in model_objs}
    pod_objs = await kube.list("v1", "Pod", namespace, _selector(pool, "runtime"))
    pods = [PodView(p["metadata"]["name"], p["status"]["podIP"]) for p in pod_objs
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
    pods.sort(key=lambda p: p.name)
    await asyncio.gather(*(fetch_state(session, p, token) for p in pods))
    reachable = [p for p in pods if p.actual is not None]
    result = plan(pool, pool_spec, models, reachable, pool_spec.gateway.max_concurrency)

    for pod in reachable:
        desired = result.documents[pod.name]
        current = (pod.actual or {}).get("desired", {}).get("models", [])
        if not same_models(current, desired):
            log.info("pool %s: pushing %d model(s) to pod %s", pool, len(desired), pod.name)
            await push(
                session, f"http://{pod.ip}:{ADMIN_PORT}/admin/state", token, {"models": desired}
            )
    state_data = {
        f"{p.name}.yaml": yaml.safe_dump({"models": result.documents.get(p.name, [])}) for p in pods
    }
    for i in range(pool_spec.replicas.max):  # pods that do not exist yet start empty
        state_data.setdefault(f"{pool}-{i}.yaml", yaml.safe_dump({"models": []}))
    await kube.apply(config_map(pool_obj, "state", state_data))
    await kube.apply(
        config_map(pool_obj, "routes", {"routes.yaml": yaml.safe_dump({"models": result.routes})})
    )
    gateways = await kube.list("v1", "Pod", namespace, _selector(pool, "gateway"))
    for gw in gateways:
        ip = gw.get("status", {}).get("podIP")
        if ip:
            await push(
                session, f"http://{ip}:{ADMIN_PORT}/admin/routes", token, {"models": result.routes}
            )

    for obj in model_objs:
        name = obj["metadata"]["name"]
        spec = models[name]
        status = result.model_status[name]
        previous = obj.get("status") or {}
        # An eviction is seen in the pass that makes it; later passes only see a
        # version that does not fit. Keep naming the winner while it holds the room.
        evicted_by = {}
        for version, reason in status["unplaced"].items():
            earlier = (previous.get("evictedBy") or {}).get(version)
            if "evicted by" in reason:
                evicted_by[version] = reason
            elif earlier:
                evicted_by[version] = status["unplaced"][version] = earlier
        new = {
            "observedGeneration": obj["metadata"].get("generation", 0),
            "readyReplicas": status["readyReplicas"],
            "versions": status["versions"],
            "url": f"http://{name}.{namespace}.svc/v2/models/{name}/infer",
            "conditions": conditions(status, spec, obj["metadata"].get("generation", 0)),
            # A merge patch removes a key only when told so with null.
            "evictedBy": {**dict.fromkeys(previous.get("evictedBy") or {}), **evicted_by},
        }
        for key, reason in status["unplaced"].items():
            if "evicted by" in reason and previous.get("lastFailure", {}).get("message") != reason:
                await kube.event(obj, "Evicted", f"version {key}: {reason}", "Warning")
        was = {v["version"]: v.get("pods", []) for v in previous.get("versions", [])}
        for version in status["versions"]:
            if version["pods"] and version["pods"] != was.get(version["version"]):
                await kube.event(obj, "Placed", f"version {version['version']} ({version['role']}) "
                                 f"placed on {', '.join(version['pods'])}")  # fmt: skip
        if status["unplaced"] or status["failures"]:
            message = "; ".join([*status["unplaced"].values(), *status["failures"]])
            new["lastFailure"] = {"reason": "Degraded", "message": message,
                                  "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
        if _comparable_status(previous) != _comparable_status(new):
            await kube.patch_status(API_VERSION, "InferenceModel", namespace, name, new)
    pool_status = {
        "observedGeneration": pool_obj["metadata"].get("generation", 0),
        "readyReplicas": len(reachable),
        "pods": [{"name": p.name, "ip": p.ip,
                  "models": [f"{n}:{v}" for n, v in sorted(p.versions())],
                  "memoryInUseMB": (p.actual or {}).get("actual", {}).get("memory_in_use_mb", 0)}
                 for p in reachable],
    }  # fmt: skip
    if _comparable_status(pool_obj.get("status") or {}) != _comparable_status(pool_status):
        await kube.patch_status(API_VERSION, "InferencePool", namespace, pool, pool_status)


def _selector(pool: str, component: str) -> str:
    return ",".join(
        f"{k}={v}"
        for k, v in labels(pool, component).items()
        if k != "app.kubernetes.io/managed-by"
    )


def same_models(current: list[dict[str, Any]], desired: list[dict[str, Any]]) -> bool:
    """Whether the pod's desired document already says what we want (the runtime
    reports every field with its defaults; we compare the fields we set)."""
    by_key = {(m["name"], m["version"]): m for m in current}
    if set(by_key) != {(m["name"], m["version"]) for m in desired}:
        return False
    return all(_covers(by_key[(m["name"], m["version"])], m) for m in desired)


def _covers(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list | tuple):
        return (
            isinstance(have, list | tuple)
            and len(have) == len(want)
            and all(_covers(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


def _comparable_status(status: dict[str, Any]) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if k not in ("lastTransitionTime", "time", "memoryInUseMB")
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(status)
