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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import yaml
from pydantic import ValidationError

from modelfleet.api.routes import GatewayServer, ModelRoute, RoutesDocument
from modelfleet.api.runtime_document import ModelConfig
from modelfleet.operator import metrics
from modelfleet.operator.autoscale import Decision, Inputs, LoadWindow, Policy, decide, sample
from modelfleet.operator.canarysteps import (
    ACTIVE,
    Outcome,
    State,
    advance,
    mirrored,
    promotion,
    routed_spec,
    seen_on,
)
from modelfleet.operator.desired import (
    Plan,
    VersionReport,
    plan,
    runtime_document,
    settle_scaled,
    sizing_demands,
)
from modelfleet.operator.kube import Conflict, Kube, KubeError
from modelfleet.operator.manifests import (
    ADMIN_PORT,
    DATA_PORT,
    GRPC_PORT,
    TOKEN_KEY,
    TOKEN_PATH,
    Owner,
    config_map,
    model_service,
    selector,
)
from modelfleet.operator.observed import Key, PodView, model_entry
from modelfleet.operator.podapi import (
    PodAPI,
    document_entry,
    routes_entries,
    same_models,
    same_routes,
)
from modelfleet.operator.poolscale import size_pool
from modelfleet.operator.rates import RateWindow
from modelfleet.operator.rates import attainment as attained
from modelfleet.operator.restarts import Restarts, restart_messages
from modelfleet.operator.spec import API_VERSION, ModelSpec, PoolSpec, ShadowStage, runtime_model
from modelfleet.operator.stamps import epoch as _epoch
from modelfleet.operator.stamps import iso as _iso
from modelfleet.operator.status import (
    Rates,
    analysis_condition,
    comparable,
    condition,
    model_status,
    pool_status,
    shadow_status,
    unknown_pool_conditions,
    with_times,
)

log = logging.getLogger("modelfleet.operator")
REFRESH_S = 10.0
"""Live figures (request counters, memory) in status are refreshed at most this often."""
TOKEN_TTL_S = 60.0
"""A pool's admin token is read from its Secret again after this long."""


@dataclass(frozen=True)
class Seen:
    """What the operator's watches have seen (kopf indices, kept current by kopf),
    so that a pass reads its models and pods without listing them."""

    models: Mapping[tuple[str, str], Iterable[dict[str, Any]]]
    """(namespace, pool) -> the models naming that pool."""
    pods: Mapping[tuple[str, str, str], Iterable[dict[str, Any]]]
    """(namespace, pool, component) -> the pool's pods of that component."""

    def pods_of(self, namespace: str, pool: str, component: str) -> list[dict[str, Any]]:
        return list(self.pods.get((namespace, pool, component), ()))

    def models_of(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        return list(self.models.get((namespace, pool), ()))


@dataclass
class CanaryScaling:
    """A canary's copies, decided by the same rule on its own load (its share of the
    traffic), between one copy and the model's maxReplicas."""

    version: str
    decision: Decision
    before: int
    last_change: float | None

    def status(self) -> dict[str, Any]:
        d = self.decision
        return {"version": self.version, "desiredReplicas": d.copies, "reason": d.reason,
                "detail": d.message, "load": d.load, "lastScaleTime": _iso(self.last_change),
                "lowSince": _iso(d.low_since)}  # fmt: skip


@dataclass
class Scaling:
    """One autoscaled model in one pass: the decision, and what placement made of it."""

    policy: Policy
    decision: Decision
    before: int
    """The copies wanted before this pass's decision."""
    place: int
    """The copies asked of placement (the decision, at most one a pod)."""
    last_change: float | None
    blocked: str = ""
    """Why copies the decision wants are not placed (empty when all are)."""
    canary: CanaryScaling | None = None
    """The canary's own decision, on its own load (a model with a canary)."""

    def status(self) -> dict[str, Any]:
        """``status.autoscaling`` (a merge patch: None removes a key)."""
        d = self.decision
        return {"desiredReplicas": d.copies, "reason": d.reason, "detail": d.message,
                "load": d.load, "lastScaleTime": _iso(self.last_change),
                "lowSince": _iso(d.low_since), "blocked": self.blocked or None,
                "canary": self.canary.status() if self.canary else None}  # fmt: skip

    @property
    def busy(self) -> bool:
        """The next pass should come soon: a change under way, a scale-down pending or
        too few samples (a steady load is sampled at the converged pace)."""
        d, c = self.decision, self.canary
        return (d.copies != self.before or d.reason not in ("Steady", "ScaledToZero")
                or (c is not None and (c.decision.copies != c.before
                                       or c.decision.reason != "Steady")))  # fmt: skip


@dataclass
class PassResult:
    progressing: bool
    """Something is still moving (loading, unanswered pods, pushes just made):
    the next pass should come soon."""


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc/v2/models/{name}/infer"


def state_file(pool_spec: PoolSpec, models: list[ModelConfig]) -> str:
    """A runtime pod's whole document, as mounted at /etc/modelfleet/state.yaml: the
    fields the operator set (``exclude_unset``), in the models' order."""
    document = runtime_document(pool_spec, models)
    server = document.server.model_dump(mode="json", exclude_unset=True)
    written = {"server": server, "models": [document_entry(m) for m in document.models]}
    return yaml.safe_dump(written, sort_keys=False)


def routes_file(models: dict[str, ModelRoute]) -> str:
    """The gateways' routes document (the routes ConfigMap's ``routes.yaml``), in the
    models the gateways read it with (``modelfleet.api.routes``)."""
    server = GatewayServer(host="0.0.0.0", port=DATA_PORT, admin_port=ADMIN_PORT,
                           grpc_port=GRPC_PORT, admin_token_file=TOKEN_PATH)  # fmt: skip
    document = RoutesDocument(server=server, models=models)
    written = {"server": document.server.model_dump(mode="json", exclude_unset=True),
               "models": routes_entries(document.models)}  # fmt: skip
    return yaml.safe_dump(written, sort_keys=False)


def remembered(data: dict[str, str], pod: str) -> tuple[ModelConfig, ...]:
    """The model entries of a pod's durable document (its state ConfigMap key), typed;
    an entry that does not validate is left out."""
    try:
        document = yaml.safe_load(data.get(f"{pod}.yaml", "")) or {}
        models = document.get("models") or []
        entries = (model_entry(m) for m in models if isinstance(m, dict))
        return tuple(m for m in entries if m is not None)
    except (yaml.YAMLError, TypeError, AttributeError):
        return ()


def routed(data: dict[str, str]) -> dict[Key, int]:
    """The routes in force (the routes ConfigMap, written after the gateways took
    them): each version's weight, when it has endpoints to receive traffic."""
    try:
        document = yaml.safe_load(data.get("routes.yaml", "")) or {}
        out: dict[Key, int] = {}
        for name, route in (document.get("models") or {}).items():
            for v in route.get("versions") or []:
                if v.get("endpoints") and int(v.get("weight", 0)) > 0:
                    out[(str(name), str(v["version"]))] = int(v["weight"])
        return out
    except (yaml.YAMLError, TypeError, AttributeError, KeyError, ValueError):
        return {}


def routed_endpoints(data: dict[str, str]) -> dict[Key, set[str]]:
    """The routes in force (the routes ConfigMap): each version's data endpoints."""
    try:
        document = yaml.safe_load(data.get("routes.yaml", "")) or {}
        out: dict[Key, set[str]] = {}
        for name, route in (document.get("models") or {}).items():
            for v in route.get("versions") or []:
                out[(str(name), str(v["version"]))] = {str(e) for e in v.get("endpoints") or []}
        return out
    except (yaml.YAMLError, TypeError, AttributeError, KeyError, ValueError):
        return {}


def state_data(
    pool: str, pool_spec: PoolSpec, previous: dict[str, str], documents: dict[str, list[ModelConfig]]
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
        self.rates: dict[tuple[str, str], RateWindow] = {}
        """(model uid, version) -> its request counters over the last minute."""
        self.objectives: dict[tuple[str, str], RateWindow] = {}
        """(model uid, version) -> its answers within / past its latency objective."""
        self.loads: dict[tuple[str, str], LoadWindow] = {}
        """(model uid, version) -> its in-flight and queue-time samples (the autoscaler's)."""
        self.statuses: dict[str, dict[str, Any]] = {}
        """uid -> the status this process last wrote. The operator is the only writer
        of its resources' status, so this is their status now, even before the
        watch (and so the index a pass reads) has seen the write."""
        self.tokens: dict[tuple[str, str], tuple[str, float]] = {}
        """(namespace, pool) -> its admin token and when it was read."""
        self.over_declared: set[tuple[str, str]] = set()
        """(model uid, version) measured above its memoryMB and warned about (once)."""
        self.mirrors: dict[str, list[dict[str, Any]]] = {}
        """uid -> the gateways' shadow comparison summaries of a model in a canary
        analysis' shadow stage, as the last pass read them (the next pass judges them)."""

    def forget(self, uid: str) -> None:
        """A deleted object: drop what this process remembered of it."""
        self.written.pop(uid, None)
        self.statuses.pop(uid, None)
        self.mirrors.pop(uid, None)
        for windows in (self.rates, self.objectives, self.loads):
            for key in [k for k in windows if k[0] == uid]:
                del windows[key]

    def status_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object's current status: what this process last wrote, else what it shows."""
        return self.statuses.get(obj["metadata"].get("uid", "")) or obj.get("status") or {}

    async def _token(self, namespace: str, pool: str) -> str | None:
        cached = self.tokens.get((namespace, pool))
        if cached is not None and time.monotonic() - cached[1] < TOKEN_TTL_S:
            return cached[0]
        secret = await self.kube.get("v1", "Secret", namespace, f"{pool}-admin-token")
        if secret is None:
            return None
        token = base64.b64decode(secret["data"][TOKEN_KEY]).decode()
        self.tokens[(namespace, pool)] = (token, time.monotonic())
        return token

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

    async def converge(self, namespace: str, pool_name: str, seen: Seen) -> PassResult:
        kube = self.kube
        pool_obj = await kube.get(API_VERSION, "InferencePool", namespace, pool_name)
        if pool_obj is None or pool_obj["metadata"].get("deletionTimestamp"):
            return PassResult(progressing=False)
        pool_obj.setdefault("kind", "InferencePool")
        owner = Owner.of(pool_obj)
        pool_spec = PoolSpec.model_validate(pool_obj.get("spec") or {})
        token = await self._token(namespace, pool_name)
        if token is None:
            log.info("pool %s: no admin token yet; waiting for the pool handler", pool_name)
            return PassResult(progressing=True)
        api = PodAPI(self.http, token)

        model_objs, models = await self._models(pool_name, seen.models_of(namespace, pool_name))
        state_cm = await kube.get("v1", "ConfigMap", namespace, f"{pool_name}-state")
        previous_data: dict[str, str] = (state_cm or {}).get("data") or {}
        pod_objs = seen.pods_of(namespace, pool_name, "runtime")
        pods = sorted(
            (PodView(p["metadata"]["name"], p["status"]["podIP"],
                     remembered=remembered(previous_data, p["metadata"]["name"]),
                     restarts=Restarts.from_index(p["status"].get("restarts")))
             for p in pod_objs
             if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")),
            key=lambda p: p.name,
        )  # fmt: skip
        states = await asyncio.gather(*(api.runtime_state(p.ip) for p in pods))
        for pod, state in zip(pods, states, strict=True):
            pod.state = state
        unreachable = [p.name for p in pods if not p.reachable]

        routes_cm = await kube.get("v1", "ConfigMap", namespace, f"{pool_name}-routes")
        routes_data: dict[str, str] | None = (routes_cm or {}).get("data")
        in_force = routed(routes_data or {})
        gateways = seen.pods_of(namespace, pool_name, "gateway")
        demand = await self._demand(api, gateways, model_objs, models, pods)
        scaling = self._autoscale(model_objs, models, pods, demand)
        sizing = await size_pool(
            kube, pool_obj, pool_spec,
            sizing_demands(models, pods, {n: s.decision.copies for n, s in scaling.items()},
                           {n: s.canary.decision.copies for n, s in scaling.items() if s.canary}),
            pods, {u for urls in routed_endpoints(routes_data or {}).values() for u in urls},
            self.status_of(pool_obj).get("scaling") or {},
        )  # fmt: skip
        draining = sizing.draining if sizing else []
        staying = len(pods) - len(draining)
        copies = {name: min(s.place, staying) if draining else s.place
                  for name, s in scaling.items()}  # fmt: skip
        canary_copies = {name: min(s.canary.decision.copies, max(1, staying))
                         for name, s in scaling.items() if s.canary}  # fmt: skip
        analyses = self._analyses(model_objs, models, pods)
        routed_models = {name: routed_spec(spec, analyses[name].weight, analyses[name].mirror)
                         if name in analyses else spec for name, spec in models.items()}  # fmt: skip
        result = plan(pool_spec, routed_models, pods, in_force, copies,
                      routed_endpoints(routes_data or {}), draining, canary_copies)  # fmt: skip
        for name, s in scaling.items():
            short = settle_scaled(result.reports[name].stable, s.policy.min_replicas)
            s.blocked = "; ".join(b for b in (s.blocked, short and f"not placed: {short}") if b)
        pushed = await self._push_documents(api, pods, result)
        # Gateways first, then the routes ConfigMap: the ConfigMap is the record of
        # the routes in force, and a draining version leaves the pods only once it
        # shows no traffic for it (possibly after an operator restart).
        await self._push_routes(api, gateways, pool_name, result)
        shadows = await self._shadows(api, gateways, models)
        sheds = await self._gateway_sheds(api, gateways)
        await self._write_config(owner, pool_spec, previous_data, routes_data, result)
        await self._events(namespace, model_objs, result, in_force)
        now = now_iso()
        for obj in model_objs:
            name = obj["metadata"]["name"]
            await self._model_status(obj, result, now, scaling.get(name), analyses.get(name),
                                     shadows.get(name), sheds.get(name))  # fmt: skip
        pool_before = self.status_of(pool_obj)
        pool_new = pool_status(pods, unreachable, result.reports, pool_before,
                               pool_obj["metadata"].get("generation", 0), now)  # fmt: skip
        for message in restart_messages(pool_before.get("pods") or [],
                                        {p.name: p.restarts for p in pods}):  # fmt: skip
            await self.kube.event(pool_obj, "RuntimeRestarted", message, "Warning")
        if sizing is not None:
            pool_new["scaling"] = sizing.status(pods)
            metrics.record_pool(namespace, pool_name, sizing.decision.pods, sizing.replicas,
                                pool_new["scaling"]["readyPods"])  # fmt: skip
        metrics.record_copies(namespace, pool_name, {
            name: (scaling[name].decision.copies if name in scaling else r.stable.replicas,
                   len(r.stable.endpoints))
            for name, r in result.reports.items()})  # fmt: skip
        await self._write_status(pool_obj, pool_new)
        loading = any(v.loading or v.retiring for r in result.reports.values() for v in r.versions)
        busy = any(s.busy for s in scaling.values()) or bool(sizing and sizing.busy)
        # A holding step waits for requests that come slowly: the converged pace will do.
        analysing = any(o.state.phase in ("Pending", "Running") or o.action == "promote"
                        for o in analyses.values())  # fmt: skip
        # A model at zero: a held request is noticed within a fast pass (the pass then
        # reads the gateways' demand and the pods' state, not the API server).
        at_zero = bool(demand)
        return PassResult(progressing=bool(loading or pushed or unreachable or not pods or busy
                                           or analysing or at_zero))  # fmt: skip

    def _analyses(
        self, objs: list[dict[str, Any]], models: dict[str, ModelSpec], pods: list[PodView]
    ) -> dict[str, Outcome]:
        """The canary analysis of each model with ``spec.canary.analysis``: one more
        look at both versions' counters, from what ``status.analysis`` remembers."""
        out: dict[str, Outcome] = {}
        now = time.time()
        for obj in objs:
            name = obj["metadata"]["name"]
            spec = models[name]
            if spec.canary is None or spec.canary.analysis is None:
                continue
            previous = State.of_status(self.status_of(obj).get("analysis"))
            seen = seen_on(pods, name, spec.version, spec.canary.version)
            summaries = self.mirrors.get(obj["metadata"]["uid"])
            if summaries is not None:
                seen = replace(seen, mirror=mirrored(summaries, spec.canary.version))
            out[name] = advance(spec.canary.analysis, spec.canary, previous, seen, now)
        return out

    async def _demand(
        self, api: PodAPI, gateways: list[dict[str, Any]], objs: list[dict[str, Any]],
        models: dict[str, ModelSpec], pods: list[PodView],
    ) -> dict[str, tuple[int, float | None]]:  # fmt: skip
        """Each model that may scale to zero and has no ready copy (at zero, or its first
        copy still loading) -> (requests waiting at the gateways, summed; the last one
        held, the latest of the gateways'). The gateways are only asked when some
        model of the pool is in that state."""
        cold = set()
        for obj in objs:
            name = obj["metadata"]["name"]
            auto = models[name].autoscaling
            if auto is None or auto.min_replicas > 0:
                continue
            wanted = (self.status_of(obj).get("autoscaling") or {}).get("desiredReplicas")
            key = (name, models[name].version)
            if wanted == 0 or not any(p.ready_for(key) for p in pods):
                cold.add(name)
        if not cold:
            return {}
        ips = _gateway_ips(gateways)
        answers = await asyncio.gather(*(api.gateway_demand(ip) for ip in ips))
        out: dict[str, tuple[int, float | None]] = {name: (0, None) for name in cold}
        for answer in answers:
            for name, seen in (answer or {}).items():
                if name not in out:
                    continue
                waiting, held = out[name]
                last = seen.get("last_held_at")
                if isinstance(last, int | float):
                    held = max(held or 0.0, float(last))
                count = seen.get("waiting")
                out[name] = (waiting + (count if isinstance(count, int) else 0), held)
        return out

    def _autoscale(
        self, objs: list[dict[str, Any]], models: dict[str, ModelSpec], pods: list[PodView],
        demand: Mapping[str, tuple[int, float | None]] | None = None,
    ) -> dict[str, Scaling]:  # fmt: skip
        """The autoscaler's decision for each model with ``spec.autoscaling``, from the
        load its stable version's pods report, the requests the gateways hold for it
        (``demand``, for a model at zero) and what its status remembers (the copies
        wanted, the last change, since when the load is low)."""
        out: dict[str, Scaling] = {}
        now = time.time()
        for obj in objs:
            meta = obj["metadata"]
            spec = models[meta["name"]]
            if spec.autoscaling is None:
                continue
            policy = Policy.of(spec.autoscaling)
            remembered = self.status_of(obj).get("autoscaling") or {}
            before = remembered.get("desiredReplicas")
            before = before if isinstance(before, int) else spec.replicas
            key = (meta["name"], spec.version)
            window = self.loads.setdefault((meta["uid"], spec.version), LoadWindow())
            load = window.add(time.monotonic(), *sample(pods, key))
            ready = sum(1 for p in pods if p.ready_for(key))
            last_change = _epoch(remembered.get("lastScaleTime"))
            waiting, held_at = (demand or {}).get(meta["name"], (0, None))
            decision = decide(policy, Inputs(load, before, ready, now, last_change,
                                             _epoch(remembered.get("lowSince")),
                                             waiting, held_at))  # fmt: skip
            if decision.copies != before:
                last_change = now
            place = min(decision.copies, len(pods)) if pods else decision.copies
            blocked = ""
            if place < decision.copies:
                blocked = (f"{decision.copies} copies wanted, the pool has {len(pods)} runtime "
                           "pod(s) (one copy a pod)")  # fmt: skip
            out[meta["name"]] = Scaling(policy, decision, before, place, last_change, blocked,
                                        self._canary_scaling(obj, spec, policy, remembered,
                                                             pods, now))  # fmt: skip
        return out

    def _canary_scaling(
        self, obj: dict[str, Any], spec: ModelSpec, policy: Policy, remembered: dict[str, Any],
        pods: list[PodView], now: float,
    ) -> CanaryScaling | None:  # fmt: skip
        """A canary scales on its own share: the same rule on its own load, from one copy
        (it keeps one while it exists) up to the model's maxReplicas."""
        if spec.canary is None:
            return None
        version = spec.canary.version
        seen = remembered.get("canary") or {}
        same = seen.get("version") == version
        before = seen.get("desiredReplicas") if same else None
        before = before if isinstance(before, int) else spec.canary.replicas
        key = (obj["metadata"]["name"], version)
        window = self.loads.setdefault((obj["metadata"]["uid"], version), LoadWindow())
        load = window.add(time.monotonic(), *sample(pods, key))
        ready = sum(1 for p in pods if p.ready_for(key))
        last_change = _epoch(seen.get("lastScaleTime")) if same else None
        own = replace(policy, min_replicas=1, max_replicas=max(1, policy.max_replicas))
        decision = decide(own, Inputs(load, before, ready, now, last_change,
                                      _epoch(seen.get("lowSince")) if same else None))  # fmt: skip
        if decision.copies != before:
            last_change = now
        return CanaryScaling(version, decision, before, last_change)

    async def _models(
        self, pool: str, seen: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, ModelSpec]]:
        objs, specs = [], {}
        for obj in sorted(seen, key=lambda o: str(o["metadata"]["name"])):
            meta = obj["metadata"]
            if (obj.get("spec") or {}).get("pool") != pool or meta.get("deletionTimestamp"):
                continue
            obj.setdefault("kind", "InferenceModel")
            obj.setdefault("apiVersion", API_VERSION)
            try:
                spec = ModelSpec.model_validate(obj["spec"])
                for version in spec.versions():  # what the runtime would refuse
                    runtime_model(meta["name"], spec, version)
            except ValidationError as exc:  # the schema should have caught it
                await self._invalid(obj, str(exc))
                continue
            specs[meta["name"]] = spec
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
                         ", ".join(f"{m.name}:{m.version}" for m in desired) or "none")  # fmt: skip
                pushes.append(api.put_runtime_models(pod.ip, desired))
        await asyncio.gather(*pushes)
        return len(pushes)

    async def _write_config(
        self, owner: Owner, pool_spec: PoolSpec, previous: dict[str, str],
        previous_routes: dict[str, str] | None, result: Plan,
    ) -> None:  # fmt: skip
        """The two ConfigMaps, each applied only when it changes (both were read
        at the start of the pass)."""
        data = state_data(owner.name, pool_spec, previous, result.documents)
        if data != previous:
            await self.kube.apply(config_map(owner, "state", data))
        routes = {"routes.yaml": routes_file(result.routes)}
        if previous_routes != routes:
            await self.kube.apply(config_map(owner, "routes", routes))

    async def _push_routes(
        self, api: PodAPI, gateways: list[dict[str, Any]], pool: str, result: Plan
    ) -> None:
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

    async def _shadows(
        self, api: PodAPI, gateways: list[dict[str, Any]], models: dict[str, ModelSpec]
    ) -> dict[str, list[dict[str, Any]]]:
        """Each model with a shadow, or a canary analysis with a shadow stage -> every
        answering gateway's comparison summary of it (``{}`` from a gateway that has none:
        it compared nothing yet; the gateways are only asked when some model has one)."""
        wanted = {name for name, spec in models.items()
                  if spec.shadow is not None or _shadow_stage(spec) is not None}  # fmt: skip
        if not wanted:
            return {}
        ips = _gateway_ips(gateways)
        answers = await asyncio.gather(*(api.gateway_shadow(ip) for ip in ips))
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
        for answer in answers:
            if answer is not None:
                for name in wanted:
                    out[name].append(answer.get(name) or {})
        return out

    async def _gateway_sheds(
        self, api: PodAPI, gateways: list[dict[str, Any]]
    ) -> dict[str, dict[str, int]]:
        """model -> version -> infer requests the pool's gateways refused (summed): they
        never reached a runtime, whose counts alone would leave them out of the shed rate."""
        answers = await asyncio.gather(*(api.gateway_shed(ip) for ip in _gateway_ips(gateways)))
        out: dict[str, dict[str, int]] = {}
        for answer in answers:
            for model, versions in (answer or {}).items():
                for version, count in versions.items():
                    mine = out.setdefault(model, {})
                    mine[version] = mine.get(version, 0) + count
        return out

    async def _events(
        self, namespace: str, model_objs: list[dict[str, Any]], result: Plan,
        in_force: dict[Key, int],
    ) -> None:  # fmt: skip
        by_name = {o["metadata"]["name"]: o for o in model_objs}
        for name, route_doc in result.routes.items():
            new = _shares(route_doc)
            old = _percent({k[1]: w for k, w in in_force.items() if k[0] == name})
            if name in by_name and new and new != old:
                split = ", ".join(f"version {v} {p}%" for v, p in new.items())
                await self.kube.event(by_name[name], "TrafficSplit", f"traffic now: {split}")
        roles = {(n, v.version): v.role for n, r in result.reports.items() for v in r.versions}
        for name, report in result.reports.items():
            if name in by_name:
                await self._memory_events(by_name[name], report.versions)
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

    async def _memory_events(self, obj: dict[str, Any], versions: list[VersionReport]) -> None:
        """A Warning the first time a version's measured device memory exceeds its
        declared memoryMB (placement then uses the measurement)."""
        uid = obj["metadata"]["uid"]
        for v in versions:
            key = (uid, v.version)
            if not v.over_declared or key in self.over_declared:
                continue
            self.over_declared.add(key)
            await self.kube.event(obj, "MemoryOverDeclared", (
                f"version {v.version} measured {v.measured_mb:.0f} MB of device memory (weights "
                f"plus the largest warm-up batch's peak) against memoryMB {v.declared_mb:g}: "
                "placement uses the measurement now; raise memoryMB or lower "
                "batching.maxBatchSize"), "Warning")  # fmt: skip

    async def _model_status(
        self, obj: dict[str, Any], result: Plan, now: str, scaling: Scaling | None = None,
        analysis: Outcome | None = None, shadows: list[dict[str, Any]] | None = None,
        gateway_shed: Mapping[str, int] | None = None,
    ) -> None:  # fmt: skip
        meta = obj["metadata"]
        report = result.reports[meta["name"]]
        clock = time.monotonic()
        rates: dict[str, Rates] = {}
        attainment: dict[str, float] = {}
        for v in report.versions:
            window = self.rates.setdefault((meta["uid"], v.version), RateWindow())
            # Refused at a gateway: failed and shed, as a runtime's refusal counts.
            at_gateway = (gateway_shed or {}).get(v.version, 0)
            failed, shed = v.errors + at_gateway, v.shed + at_gateway
            if (measured := window.add(clock, v.requests, failed, shed)) is not None:
                rates[v.version] = measured
            # Only the runtimes of a model with a latency objective count these.
            objective = self.objectives.setdefault((meta["uid"], v.version), RateWindow())
            share = attained(objective, clock, v.objective_met, v.objective_missed)
            if share is not None:
                attainment[v.version] = share
        previous = self.status_of(obj)
        new = model_status(report, model_url(meta["name"], meta["namespace"]), previous,
                           meta.get("generation", 0), now, rates, attainment)  # fmt: skip
        new["desiredReplicas"] = scaling.decision.copies if scaling else report.stable.replicas
        new["selector"] = selector(str(obj["spec"]["pool"]), "runtime")
        if scaling is not None:
            new["autoscaling"] = scaling.status()
            await self._scale_events(obj, previous.get("autoscaling") or {}, scaling)
        elif "autoscaling" in previous:
            new["autoscaling"] = None  # autoscaling removed: the merge patch drops it
        await self._rollout_events(obj, previous, new)
        await self._analysis(obj, previous.get("analysis"), new, analysis)
        record = State.of_status(new["analysis"] if "analysis" in new else previous.get("analysis"))
        if record is not None:  # the Analysis condition says what status.analysis holds
            new["conditions"] += with_times([analysis_condition(record.phase, record.reason)],
                                            previous.get("conditions") or [], now,
                                            meta.get("generation", 0))  # fmt: skip
        spec = ModelSpec.model_validate(obj["spec"])
        shadow, stage = spec.shadow, _shadow_stage(spec)
        if shadow is not None:
            new["shadow"] = shadow_status(shadow.version, shadow.percent, shadows or [])
        elif stage is not None and spec.canary is not None:  # the canary is the shadow
            self.mirrors[meta["uid"]] = shadows or []
            new["shadow"] = shadow_status(spec.canary.version, stage.percent, shadows or [])
        elif "shadow" in previous:
            new["shadow"] = None  # shadow removed: the merge patch drops it
        if stage is None:
            self.mirrors.pop(meta["uid"], None)
        await self._write_status(obj, new)
        if analysis is not None and analysis.state.phase == "Promoted":
            await self._promote(obj)

    async def _analysis(
        self, obj: dict[str, Any], previous: Any, new: dict[str, Any], outcome: Outcome | None
    ) -> None:
        """``status.analysis`` and the analysis' events. Without an analysis in the spec
        the status keeps only a promotion's record (once the canary is gone); an
        analysis that was running when its spec was removed stops with an event."""
        if outcome is None:
            was = State.of_status(previous)
            if was is None:
                return
            canary = (obj.get("spec") or {}).get("canary")
            if was.phase == "Promoted" and not canary:
                return
            new["analysis"] = None  # a merge patch drops it
            if was.phase in ACTIVE:
                why = ("the canary was removed (rolled back by hand)" if not canary
                       else "spec.canary.analysis was removed")  # fmt: skip
                await self.kube.event(obj, "AnalysisStopped", f"AnalysisStopped: {why}; "
                                      f"stopped at step {was.step + 1} of {was.steps}")  # fmt: skip
            return
        new["analysis"] = outcome.state.as_status()
        events = {"shadow": ("AnalysisShadow", "Normal"),
                  "start": ("AnalysisStep", "Normal"), "next": ("AnalysisStep", "Normal"),
                  "promote": ("AnalysisPromoted", "Normal"),
                  "rollback": ("AnalysisFailed", "Warning"),
                  "hold": ("AnalysisHolding", "Warning"), "stop": ("AnalysisStopped", "Normal")}  # fmt: skip
        if outcome.action in events:
            reason, kind = events[outcome.action]
            await self.kube.event(obj, reason, outcome.reason, kind)

    async def _promote(self, obj: dict[str, Any]) -> None:
        """The analysis passed its last step: the spec promotes the canary (retried each
        pass until it lands; a conflicting edit meanwhile wins and is judged next pass)."""
        meta = obj["metadata"]
        if not (obj.get("spec") or {}).get("canary"):
            return
        for attempt in range(2):
            try:
                await self.kube.patch(API_VERSION, "InferenceModel", meta["namespace"],
                                      meta["name"], promotion(obj))  # fmt: skip
                log.info("model %s: canary analysis passed, canary promoted", meta["name"])
                return
            except Conflict:
                # Written meanwhile (often kopf's own annotations): promote the object as it
                # is now if its canary is still the one judged, else the edit wins.
                fresh = await self.kube.get(API_VERSION, "InferenceModel", meta["namespace"],
                                            meta["name"])  # fmt: skip
                if attempt or fresh is None or not _same_canary(obj, fresh):
                    log.info("model %s: edited meanwhile; promotion judged again", meta["name"])
                    return
                obj = fresh
            except KubeError as exc:
                log.warning("model %s: promoting the canary failed (retried): %s",
                            meta["name"], exc)  # fmt: skip
                return

    async def _scale_events(
        self, obj: dict[str, Any], previous: dict[str, Any], scaling: Scaling
    ) -> None:
        """ScaledUp / ScaledDown when the decision changes the copies; ScaleBlocked
        (Warning) when copies it wants cannot be placed, once per new reason."""
        d, before = scaling.decision, scaling.before
        if d.copies != before:
            reason = ("ScaledUp" if d.copies > before
                      else "ScaledToZero" if d.copies == 0 else "ScaledDown")  # fmt: skip
            await self.kube.event(obj, reason, d.message)
            metrics.record_decision(obj["metadata"]["namespace"], "InferenceModel",
                                    obj["metadata"]["name"], reason)  # fmt: skip
        canary = scaling.canary
        if canary is not None and canary.decision.copies != canary.before:
            reason = "ScaledUp" if canary.decision.copies > canary.before else "ScaledDown"
            await self.kube.event(obj, reason, f"canary version {canary.version}: "
                                  f"{canary.decision.message}")  # fmt: skip
            metrics.record_decision(obj["metadata"]["namespace"], "InferenceModel",
                                    obj["metadata"]["name"], reason)  # fmt: skip
        if scaling.blocked and scaling.blocked != previous.get("blocked"):
            metrics.record_decision(obj["metadata"]["namespace"], "InferenceModel",
                                    obj["metadata"]["name"], "ScaleBlocked")  # fmt: skip
            await self.kube.event(obj, "ScaleBlocked", f"{d.copies} copies wanted, "
                                  f"{scaling.place} asked of placement: {scaling.blocked}",
                                  "Warning")  # fmt: skip

    async def _rollout_events(
        self, obj: dict[str, Any], previous: dict[str, Any], new: dict[str, Any]
    ) -> None:
        """An event for each rollout step, seen as a change of the Progressing reason."""
        before = _reason(previous, "Progressing")
        after = next(c for c in new["conditions"] if c["type"] == "Progressing")
        if after["reason"] == before:
            return
        if after["reason"].startswith("Rollout"):
            kind = "Warning" if after["reason"] in ("RolloutBlocked", "RolloutFailed") else "Normal"
            await self.kube.event(obj, after["reason"], after["message"], kind)
        elif before.startswith("Rollout") and after["reason"] == "Converged":
            stable = new["versions"][0]["version"]
            await self.kube.event(obj, "RolloutComplete", f"version {stable} serves all traffic")

    async def _write_status(self, obj: dict[str, Any], new: dict[str, Any]) -> None:
        """One status patch per object per pass, and only when something a user
        would read changed (or the live figures are older than ``REFRESH_S``)."""
        meta = obj["metadata"]
        previous = self.status_of(obj)
        stale = time.monotonic() - self.written.get(meta["uid"], 0.0) > REFRESH_S
        if comparable(previous) == comparable(new) and (not stale or previous == new):
            return
        kind = obj.get("kind", "InferenceModel")
        await self.kube.patch_status(API_VERSION, kind, meta["namespace"], meta["name"], new)
        self.written[meta["uid"]] = time.monotonic()
        self.statuses[meta["uid"]] = _merged(previous, new)

    async def mark_unknown_pool(self, obj: dict[str, Any]) -> None:
        """Status of a model whose pool does not exist (it serves nowhere)."""
        meta = obj["metadata"]
        generation = meta.get("generation", 0)
        previous = self.status_of(obj)
        conds = with_times(unknown_pool_conditions(obj["spec"]["pool"]),
                           previous.get("conditions") or [], now_iso(), generation)  # fmt: skip
        status = {"observedGeneration": generation, "readyReplicas": 0, "versions": [],
                  "url": model_url(meta["name"], meta["namespace"]), "conditions": conds}  # fmt: skip
        if comparable(previous) != comparable({**previous, **status}):
            await self.kube.patch_status(
                API_VERSION, "InferenceModel", meta["namespace"], meta["name"], status
            )
            self.statuses[meta.get("uid", "")] = _merged(previous, status)

    async def _invalid(self, obj: dict[str, Any], message: str) -> None:
        meta = obj["metadata"]
        conds = [condition("Degraded", True, "InvalidSpec", message[:1000]),
                 condition("Ready", False, "InvalidSpec", "the spec cannot be read")]  # fmt: skip
        previous = self.status_of(obj).get("conditions") or []
        status = {"observedGeneration": meta.get("generation", 0),
                  "conditions": with_times(conds, previous, now_iso(), meta.get("generation", 0))}  # fmt: skip
        await self._write_status(obj, status)


def _shadow_stage(spec: ModelSpec) -> ShadowStage | None:
    """The shadow stage of the model's canary analysis, if it has one."""
    analysis = spec.canary.analysis if spec.canary else None
    return analysis.shadow if analysis else None


def _same_canary(judged: dict[str, Any], now: dict[str, Any]) -> bool:
    """The object's canary (version, source, weight, analysis) is still the one judged."""
    return bool((judged.get("spec") or {}).get("canary") == (now.get("spec") or {}).get("canary"))


def _reason(status: dict[str, Any], kind: str) -> str:
    return next((str(c.get("reason", "")) for c in status.get("conditions") or []
                 if c.get("type") == kind), "")  # fmt: skip


def _percent(weights: dict[str, int]) -> dict[str, int]:
    total = sum(weights.values())
    return {v: round(100 * w / total) for v, w in sorted(weights.items()) if w} if total else {}


def _shares(route_doc: ModelRoute) -> dict[str, int]:
    """Each routed version's share of a model's traffic, in percent."""
    return _percent({v.version: int(v.weight) for v in route_doc.versions if v.endpoints})


def _merged(previous: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A status after a JSON merge patch of ``patch`` (top-level keys replace, None deletes)."""
    out = {**previous, **patch}
    return {k: v for k, v in out.items() if v is not None}


def _gateway_ips(gateways: list[dict[str, Any]]) -> list[str]:
    """The pod IPs of the pool's gateways that are up and not being deleted."""
    return [ip for gw in gateways if (ip := gw.get("status", {}).get("podIP"))
            and not gw["metadata"].get("deletionTimestamp")]  # fmt: skip
