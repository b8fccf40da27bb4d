"""kopf handlers. One daemon per pool runs the level-triggered convergence loop;
every other handler only applies children or pokes that loop so it runs sooner.

Nothing here decides anything: ``desired`` (pure) decides, ``reconcile`` reads
and writes around it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from modelfleet.operator.kube import Kube, KubeError
from modelfleet.operator.login import connection
from modelfleet.operator.manifests import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    Owner,
    model_service,
    pool_children,
    token_secret,
)
from modelfleet.operator.reconcile import Reconciler, Seen
from modelfleet.operator.restarts import Restarts
from modelfleet.operator.settings import SettingsError, admin_token
from modelfleet.operator.spec import API_VERSION, GROUP, PoolSpec

log = logging.getLogger("modelfleet.operator")
FAST_S = 1.0
"""Pass interval while something is moving (models loading, pods not answering)."""
SLOW_S = 5.0
"""Pass interval once converged; handlers and pod events trigger passes sooner."""


@dataclass
class Fleet:
    """The operator's state, passed to every handler as kopf's ``memo`` (kopf copies
    the memo shallowly per object, so these are shared): the clients, made at
    start-up, and the per-pool triggers of the convergence loops."""

    kube: Kube | None = None
    http: aiohttp.ClientSession | None = None
    reconciler: Reconciler | None = None
    triggers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def trigger(self, namespace: str, pool: str) -> asyncio.Event:
        return self.triggers.setdefault((namespace, pool), asyncio.Event())

    def poke(self, namespace: str, pool: str | None) -> None:
        if pool:
            self.trigger(namespace, pool).set()

    def ready(self) -> tuple[Kube, Reconciler]:
        if self.kube is None or self.reconciler is None:
            raise kopf.TemporaryError("the operator's clients are not started yet", delay=1)
        return self.kube, self.reconciler


def _seen(kwargs: dict[str, Any]) -> Seen:
    """The indices kopf passes every handler by their names (live views)."""
    return Seen(kwargs["models_by_pool"], kwargs["pods_by_pool"])


def _login() -> kopf.ConnectionInfo | None:
    return connection()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Fleet, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # kopf's bookkeeping in annotations under our group: status stays ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    memo.kube = Kube(_login)
    memo.http = aiohttp.ClientSession()
    memo.reconciler = Reconciler(memo.kube, memo.http)


@kopf.on.cleanup()
async def cleanup(memo: Fleet, **_: Any) -> None:
    if memo.kube is not None:
        await memo.kube.close()
    if memo.http is not None:
        await memo.http.close()


@kopf.index(GROUP, "inferencemodels")
def models_by_pool(
    body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, pool) -> the models that name it, as the watch last saw them:
    a pass reads its models from here instead of listing them."""
    return {(namespace or "", str(spec.get("pool", ""))): _with_kind("InferenceModel", body)}


@kopf.index("v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def pods_by_pool(
    name: str, namespace: str | None, labels: kopf.Labels, status: kopf.Status,
    meta: kopf.Meta, **_: Any,
) -> dict[tuple[str, str, str], dict[str, Any]]:  # fmt: skip
    """(namespace, pool, component) -> the pool's pods, with what a pass reads of them."""
    key = (namespace or "", labels.get(INSTANCE_LABEL, ""), labels.get(COMPONENT_LABEL, ""))
    metadata = {"name": name, "deletionTimestamp": meta.get("deletionTimestamp")}
    seen = {"podIP": status.get("podIP"), "restarts": Restarts.of(status).as_index()}
    return {key: {"metadata": metadata, "status": seen}}


def _with_kind(kind: str, body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}  # fmt: skip


@kopf.on.resume(GROUP, "inferencepools")
@kopf.on.create(GROUP, "inferencepools")
@kopf.on.update(GROUP, "inferencepools", field="spec")
async def pool_changed(
    body: kopf.Body, name: str, namespace: str | None, memo: Fleet, **_: Any
) -> None:
    """The pool's children, applied idempotently (server-side apply)."""
    kube, reconciler = memo.ready()
    namespace = namespace or ""
    pool = _with_kind("InferencePool", body)
    owner = Owner.of(pool)
    try:
        if await kube.get("v1", "Secret", namespace, f"{name}-admin-token") is None:
            await kube.apply(token_secret(owner, admin_token()))
        await reconciler.ensure_pool_config(pool)  # before the pods that mount it
        # The pods it runs now stay (the convergence loop sizes the pool within min..max).
        sts = await kube.get("apps/v1", "StatefulSet", namespace, name)
        replicas = (sts or {}).get("spec", {}).get("replicas")
        for child in pool_children(owner, PoolSpec.model_validate(pool["spec"]),
                                   replicas if isinstance(replicas, int) else None):  # fmt: skip
            await kube.apply(child)
    except (KubeError, SettingsError) as exc:
        raise kopf.TemporaryError(
            f"applying pool {name}'s children failed: {exc}", delay=5
        ) from exc
    log.info("pool %s: children applied", name)
    memo.poke(namespace, name)


@kopf.daemon(GROUP, "inferencepools", cancellation_timeout=10)
async def pool_loop(
    name: str, namespace: str | None, stopped: kopf.DaemonStopped, memo: Fleet, **kwargs: Any
) -> None:
    """The convergence loop: a pass now, then again after ``FAST_S`` or ``SLOW_S``,
    or as soon as a handler pokes it. It reads models and pods from the watches'
    indices (kept current by kopf), not by listing them."""
    _kube, reconciler = memo.ready()
    namespace = namespace or ""
    trigger = memo.trigger(namespace, name)
    seen = _seen(kwargs)
    log.info("pool %s: convergence loop started", name)
    while not stopped:
        trigger.clear()
        progressing = True
        try:
            progressing = (await reconciler.converge(namespace, name, seen)).progressing
        except KubeError as exc:
            # A conflict or a hiccup of the API server: the next pass retries.
            log.warning("pool %s: pass failed, will retry: %s", name, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pool %s: pass failed, will retry", name)
        await _pause(trigger, stopped, FAST_S if progressing else SLOW_S)
    memo.triggers.pop((namespace, name), None)


async def _pause(trigger: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Until the next pass is due, a handler pokes the loop, or kopf stops it."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = [asyncio.ensure_future(trigger.wait()), asyncio.ensure_future(until_stopped())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@kopf.on.delete(GROUP, "inferencepools")
async def pool_deleted(name: str, namespace: str | None, memo: Fleet, **kwargs: Any) -> None:
    """Its children go with it (owner references); its models now serve nowhere, and say so."""
    _kube, reconciler = memo.ready()
    namespace = namespace or ""
    try:
        for obj in _seen(kwargs).models_of(namespace, name):
            await reconciler.mark_unknown_pool(obj)
    except KubeError as exc:
        log.warning("pool %s deleted; reporting on its models failed: %s", name, exc)


@kopf.on.resume(GROUP, "inferencemodels")
@kopf.on.create(GROUP, "inferencemodels")
@kopf.on.update(GROUP, "inferencemodels", field="spec")
async def model_changed(
    body: kopf.Body, name: str, namespace: str | None, old: Any, memo: Fleet, **_: Any
) -> None:
    """The model's Service, then a pass of its pool (and of the pool it left)."""
    kube, reconciler = memo.ready()
    namespace = namespace or ""
    model = _with_kind("InferenceModel", body)
    pool = model["spec"]["pool"]
    try:
        if await kube.get(API_VERSION, "InferencePool", namespace, pool) is None:
            await reconciler.mark_unknown_pool(model)
            log.warning("model %s: pool %s does not exist", name, pool)
        else:
            await kube.apply(model_service(Owner.of(model), pool))
            reconciler.services.add((model["metadata"]["uid"], pool))
    except KubeError as exc:
        raise kopf.TemporaryError(f"model {name}: {exc}", delay=5) from exc
    memo.poke(namespace, pool)
    if isinstance(old, dict):
        memo.poke(namespace, (old.get("spec") or old).get("pool"))


@kopf.on.event(GROUP, "inferencemodels")
async def model_event(
    type: str, body: kopf.Body, namespace: str | None, memo: Fleet, **_: Any
) -> None:
    """A deleted model leaves its pool's next pass, which unloads it everywhere."""
    if type == "DELETED":
        memo.poke(namespace or "", (body.get("spec") or {}).get("pool"))
        if memo.reconciler is not None:
            memo.reconciler.forget(str(body["metadata"].get("uid", "")))


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def pod_event(body: kopf.Body, namespace: str | None, memo: Fleet, **_: Any) -> None:
    """A pool pod appeared, got its IP, or is terminating: the routes must follow now."""
    memo.poke(namespace or "", body["metadata"].get("labels", {}).get(INSTANCE_LABEL))
