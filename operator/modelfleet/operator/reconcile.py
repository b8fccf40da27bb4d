"""One level-triggered convergence pass for a pool.

Read (the pool, its models, its pods, each pod's actual state through the admin
API, the durable documents), compute the plan as pure data (``desired``), then
write: push documents and routes where they differ, the ConfigMaps, events,
and status once per resource per pass.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml
from pydantic import ValidationError

from modelfleet.operator.desired import Plan, plan, server_section
from modelfleet.operator.kube import Kube
from modelfleet.operator.manifests import (
    ADMIN_PORT,
    DATA_PORT,
    TOKEN_KEY,
    TOKEN_PATH,
    Owner,
    config_map,
    model_service,
    selector,
)
from modelfleet.operator.observed import Key, PodView
from modelfleet.operator.podapi import PodAPI, same_models, same_routes
from modelfleet.operator.spec import API_VERSION, ModelSpec, PoolSpec
from modelfleet.operator.status import (
    comparable,
    condition,
    model_status,
    pool_status,
    unknown_pool_conditions,
    with_times,
)

log = logging.getLogger("modelfleet.operator")
REFRESH_S = 30.0
"""Live figures (request counters, memory) in status are refreshed at most this often."""


@dataclass
class PassResult:
    progressing: bool
    """Something is still moving (loading, unanswered pods, pushes just made):
    the next pass should come soon."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc/v2/models/{name}/infer"


def state_file(pool_spec: PoolSpec, models: list[dict[str, object]]) -> str:
    """A runtime pod's whole document, as mounted at /etc/modelfleet/state.yaml."""
    return yaml.safe_dump({"server": server_section(pool_spec), "models": models}, sort_keys=False)


def routes_file(models: dict[str, dict[str, object]]) -> str:
    server = {"host": "0.0.0.0", "port": DATA_PORT, "admin_port": ADMIN_PORT,
              "admin_token_file": TOKEN_PATH}  # fmt: skip
    return yaml.safe_dump({"server": server, "models": models}, sort_keys=False)


def remembered(data: dict[str, str], pod: str) -> tuple[Key, ...]:
    try:
        document = yaml.safe_load(data.get(f"{pod}.yaml", "")) or {}
        return tuple(
            (str(m["name"]), str(m.get("version", "1"))) for m in document.get("models") or []
        )
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        return ()


def state_data(
    pool: str, pool_spec: PoolSpec, previous: dict[str, str], documents: dict[str, list[dict[str, object]]]
) -> dict[str, str]:  # fmt: skip
    """The state ConfigMap: one key per pod. Pods not seen this pass keep their key;
    every ordinal up to replicas.max has one, so a new pod always finds its file."""
    data = dict(previous)
    for pod, models in documents.items():
        data[f"{pod}.yaml"] = state_file(pool_spec, models)
    for i in range(pool_spec.replicas.max):
        data.setdefault(f"{pool}-{i}.yaml", state_file(pool_spec, []))
    return data


class Reconciler:
    """Runs passes; holds the clients and what it must remember between passes."""

    def __init__(self, kube: Kube, http: aiohttp.ClientSession) -> None:
        self.kube = kube
        self.http = http
        self.written: dict[str, float] = {}
        """uid -> when this process last wrote the object's status."""
        self.services: set[tuple[str, str]] = set()
        """(uid, pool) of the models whose Service this process has applied."""

    async def ensure_pool_config(self, pool_obj: dict[str, Any]) -> None:
        """The ConfigMaps the pods mount must exist (with a key for every pod)
        before the pods start; existing content is kept."""
        owner = Owner.of(pool_obj)
        spec = PoolSpec.model_validate(pool_obj.get("spec") or {})
        state = await self.kube.get("v1", "ConfigMap", owner.namespace, f"{owner.name}-state")
        previous = (state or {}).get("data") or {}
        wanted = state_data(owner.name, spec, previous, {})
        if wanted != previous:
            await self.kube.apply(config_map(owner, "state", wanted))
        routes = await self.kube.get("v1", "ConfigMap", owner.namespace, f"{owner.name}-routes")
        if routes is None:
            await self.kube.apply(config_map(owner, "routes", {"routes.yaml": routes_file({})}))

    async def converge(self, namespace: str, pool_name: str) -> PassResult:
        kube = self.kube
        pool_obj = await kube.get(API_VERSION, "InferencePool", namespace, pool_name)
        if pool_obj is None or pool_obj["metadata"].get("deletionTimestamp"):
            return PassResult(progressing=False)
        pool_obj.setdefault("kind", "InferencePool")
        owner = Owner.of(pool_obj)
        pool_spec = PoolSpec.model_validate(pool_obj.get("spec") or {})
        secret = await kube.get("v1", "Secret", namespace, f"{pool_name}-admin-token")
        if secret is None:
            log.info("pool %s: no admin token yet; waiting for the pool handler", pool_name)
            return PassResult(progressing=True)
        api = PodAPI(self.http, base64.b64decode(secret["data"][TOKEN_KEY]).decode())

        model_objs, models = await self._models(namespace, pool_name)
        state_cm = await kube.get("v1", "ConfigMap", namespace, f"{pool_name}-state")
        previous_data: dict[str, str] = (state_cm or {}).get("data") or {}
        pod_objs = await kube.list("v1", "Pod", namespace, selector(pool_name, "runtime"))
        pods = sorted(
            (PodView(p["metadata"]["name"], p["status"]["podIP"],
                     remembered=remembered(previous_data, p["metadata"]["name"]))
             for p in pod_objs
             if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")),
            key=lambda p: p.name,
        )  # fmt: skip
        states = await asyncio.gather(*(api.runtime_state(p.ip) for p in pods))
        for pod, state in zip(pods, states, strict=True):
            pod.state = state
        unreachable = [p.name for p in pods if not p.reachable]

        result = plan(pool_spec, models, pods)
        pushed = await self._push_documents(api, pods, result)
        await self._write_config(owner, pool_spec, previous_data, result)
        await self._push_routes(api, namespace, pool_name, result)
        await self._events(namespace, model_objs, result)
        now = now_iso()
        for obj in model_objs:
            await self._model_status(obj, result, now)
        pool_new = pool_status(pods, unreachable, result.reports, pool_obj.get("status") or {},
                               pool_obj["metadata"].get("generation", 0), now)  # fmt: skip
        await self._write_status(pool_obj, pool_new)
        loading = any(v.loading for r in result.reports.values() for v in r.versions)
        return PassResult(progressing=bool(loading or pushed or unreachable or not pods))

    async def _models(
        self, namespace: str, pool: str
    ) -> tuple[list[dict[str, Any]], dict[str, ModelSpec]]:
        objs, specs = [], {}
        for obj in await self.kube.list(API_VERSION, "InferenceModel", namespace):
            meta = obj["metadata"]
            if (obj.get("spec") or {}).get("pool") != pool or meta.get("deletionTimestamp"):
                continue
            obj.setdefault("kind", "InferenceModel")
            obj.setdefault("apiVersion", API_VERSION)
            try:
                specs[meta["name"]] = ModelSpec.model_validate(obj["spec"])
            except ValidationError as exc:  # the schema should have caught it
                await self._invalid(obj, str(exc))
                continue
            objs.append(obj)
            if (meta["uid"], pool) not in self.services:
                await self.kube.apply(model_service(Owner.of(obj), pool))
                self.services.add((meta["uid"], pool))
        return objs, specs

    async def _push_documents(self, api: PodAPI, pods: list[PodView], result: Plan) -> int:
        pushes = []
        for pod in pods:
            if pod.state is None:
                continue  # not answering: its ConfigMap entry is its desired state
            desired = result.documents[pod.name]
            if not same_models(list(pod.state.desired.models), desired):
                log.info("pushing %d model version(s) to pod %s: %s", len(desired), pod.name,
                         ", ".join(f"{m['name']}:{m['version']}" for m in desired) or "none")  # fmt: skip
                pushes.append(api.put_runtime_models(pod.ip, desired))
        await asyncio.gather(*pushes)
        return len(pushes)

    async def _write_config(
        self, owner: Owner, pool_spec: PoolSpec, previous: dict[str, str], result: Plan
    ) -> None:
        data = state_data(owner.name, pool_spec, previous, result.documents)
        if data != previous:
            await self.kube.apply(config_map(owner, "state", data))
        routes = {"routes.yaml": routes_file(result.routes)}
        current = await self.kube.get("v1", "ConfigMap", owner.namespace, f"{owner.name}-routes")
        if (current or {}).get("data") != routes:
            await self.kube.apply(config_map(owner, "routes", routes))

    async def _push_routes(self, api: PodAPI, namespace: str, pool: str, result: Plan) -> None:
        gateways = await self.kube.list("v1", "Pod", namespace, selector(pool, "gateway"))
        for gw in gateways:
            ip = gw.get("status", {}).get("podIP")
            if not ip or gw["metadata"].get("deletionTimestamp"):
                continue
            current = await api.gateway_routes(ip)
            if current is None:
                continue  # not answering yet: it starts from the routes ConfigMap anyway
            if not same_routes(current, result.routes):
                log.info("pool %s: pushing routes to gateway %s", pool, gw["metadata"]["name"])
                await api.put_gateway_routes(ip, result.routes)

    async def _events(self, namespace: str, model_objs: list[dict[str, Any]], result: Plan) -> None:
        by_name = {o["metadata"]["name"]: o for o in model_objs}
        roles = {(n, v.version): v.role for n, r in result.reports.items() for v in r.versions}
        for (name, version), pod in result.placed:
            if name in by_name:
                role = roles.get((name, version), "stable")
                message = f"version {version} ({role}) placed on {pod}"
                await self.kube.event(by_name[name], "Placed", message)
        for (name, version), pod in result.removed:
            winner = result.placement.evicted.get((name, version))
            if name not in by_name:
                continue
            if winner is not None:
                await self.kube.event(by_name[name], "Evicted", f"version {version} evicted from pod "
                                      f"{pod} by {winner[0]} version {winner[1]} (higher priority)",
                                      "Warning")  # fmt: skip
            else:
                await self.kube.event(
                    by_name[name], "Unplaced", f"version {version} removed from pod {pod}"
                )

    async def _model_status(self, obj: dict[str, Any], result: Plan, now: str) -> None:
        meta = obj["metadata"]
        report = result.reports[meta["name"]]
        new = model_status(report, model_url(meta["name"], meta["namespace"]),
                           obj.get("status") or {}, meta.get("generation", 0), now)  # fmt: skip
        await self._write_status(obj, new)

    async def _write_status(self, obj: dict[str, Any], new: dict[str, Any]) -> None:
        """One status patch per object per pass, and only when something a user
        would read changed (or the live figures are older than ``REFRESH_S``)."""
        meta = obj["metadata"]
        previous = obj.get("status") or {}
        stale = time.monotonic() - self.written.get(meta["uid"], 0.0) > REFRESH_S
        if comparable(previous) == comparable(new) and (not stale or previous == new):
            return
        kind = obj.get("kind", "InferenceModel")
        await self.kube.patch_status(API_VERSION, kind, meta["namespace"], meta["name"], new)
        self.written[meta["uid"]] = time.monotonic()

    async def _invalid(self, obj: dict[str, Any], message: str) -> None:
        meta = obj["metadata"]
        conds = [condition("Degraded", True, "InvalidSpec", message[:1000]),
                 condition("Ready", False, "InvalidSpec", "the spec cannot be read")]  # fmt: skip
        previous = (obj.get("status") or {}).get("conditions") or []
        status = {"observedGeneration": meta.get("generation", 0),
                  "conditions": with_times(conds, previous, now_iso(), meta.get("generation", 0))}  # fmt: skip
        await self._write_status(obj, status)


async def mark_unknown_pool(kube: Kube, obj: dict[str, Any]) -> None:
    """Status of a model whose pool does not exist (it serves nowhere)."""
    meta = obj["metadata"]
    generation = meta.get("generation", 0)
    previous = obj.get("status") or {}
    conds = with_times(unknown_pool_conditions(obj["spec"]["pool"]), previous.get("conditions") or [],
                       now_iso(), generation)  # fmt: skip
    status = {"observedGeneration": generation, "readyReplicas": 0, "versions": [],
              "url": model_url(meta["name"], meta["namespace"]), "conditions": conds}  # fmt: skip
    if comparable(previous) != comparable({**previous, **status}):
        await kube.patch_status(
            API_VERSION, "InferenceModel", meta["namespace"], meta["name"], status
        )
