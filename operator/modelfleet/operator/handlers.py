"""kopf handlers. One daemon per pool runs the level-triggered convergence loop;
every other handler only applies children or pokes that loop so it runs sooner.

Nothing here decides anything: ``desired`` (pure) decides, ``reconcile`` reads
and writes around it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from modelfleet.operator.kube import Kube, KubeError
from modelfleet.operator.manifests import (
    MANAGED_BY,
    Owner,
    model_service,
    pool_children,
    token_secret,
)
from modelfleet.operator.reconcile import Reconciler, mark_unknown_pool
from modelfleet.operator.settings import SettingsError, admin_token
from modelfleet.operator.spec import API_VERSION, GROUP, PoolSpec

log = logging.getLogger("modelfleet.operator")
FAST_S = 1.0
"""Pass interval while something is moving (models loading, pods not answering)."""
SLOW_S = 5.0
"""Pass interval once converged; handlers and pod events trigger passes sooner."""


class Fleet:
    """The operator process's clients and the per-pool triggers."""

    kube: Kube | None = None
    http: aiohttp.ClientSession | None = None
    reconciler: Reconciler | None = None
    triggers: dict[tuple[str | None, str], asyncio.Event] = {}

    @classmethod
    def trigger(cls, namespace: str | None, pool: str) -> asyncio.Event:
        return cls.triggers.setdefault((namespace, pool), asyncio.Event())

    @classmethod
    def poke(cls, namespace: str | None, pool: str | None) -> None:
        if pool:
            cls.trigger(namespace, pool).set()

    @classmethod
    def ready(cls) -> tuple[Kube, Reconciler]:
        if cls.kube is None or cls.reconciler is None:
            raise kopf.TemporaryError("the operator's clients are not started yet", delay=1)
        return cls.kube, cls.reconciler


def _login() -> kopf.ConnectionInfo | None:
    settings = kopf.OperatorSettings()
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # kopf's bookkeeping in annotations under our group: status stays ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    Fleet.kube = Kube(_login)
    Fleet.http = aiohttp.ClientSession()
    Fleet.reconciler = Reconciler(Fleet.kube, Fleet.http)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if Fleet.kube is not None:
        await Fleet.kube.close()
    if Fleet.http is not None:
        await Fleet.http.close()


def _with_kind(kind: str, body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}  # fmt: skip


@kopf.on.resume(GROUP, "inferencepools")
@kopf.on.create(GROUP, "inferencepools")
@kopf.on.update(GROUP, "inferencepools", field="spec")
async def pool_changed(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    """The pool's children, applied idempotently (server-side apply)."""
    kube, reconciler = Fleet.ready()
    namespace = namespace or ""
    pool = _with_kind("InferencePool", body)
    owner = Owner.of(pool)
    try:
        if await kube.get("v1", "Secret", namespace, f"{name}-admin-token") is None:
            await kube.apply(token_secret(owner, admin_token()))
        await reconciler.ensure_pool_config(pool)  # before the pods that mount it
        for child in pool_children(owner, PoolSpec.model_validate(pool["spec"])):
            await kube.apply(child)
    except (KubeError, SettingsError) as exc:
        raise kopf.TemporaryError(
            f"applying pool {name}'s children failed: {exc}", delay=5
        ) from exc
    log.info("pool %s: children applied", name)
    Fleet.poke(namespace, name)


@kopf.daemon(GROUP, "inferencepools", cancellation_timeout=10)
async def pool_loop(
    name: str, namespace: str | None, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """The convergence loop: a pass now, then again after ``FAST_S`` or ``SLOW_S``,
    or as soon as a handler pokes it."""
    _kube, reconciler = Fleet.ready()
    namespace = namespace or ""
    trigger = Fleet.trigger(namespace, name)
    log.info("pool %s: convergence loop started", name)
    while not stopped:
        trigger.clear()
        progressing = True
        try:
            progressing = (await reconciler.converge(namespace, name)).progressing
        except KubeError as exc:
            # A conflict or a hiccup of the API server: the next pass retries.
            log.warning("pool %s: pass failed, will retry: %s", name, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pool %s: pass failed, will retry", name)
        await _pause(trigger, stopped, FAST_S if progressing else SLOW_S)
    Fleet.triggers.pop((namespace, name), None)


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
async def pool_deleted(name: str, namespace: str | None, **_: Any) -> None:
    """Its children go with it (owner references); its models now serve nowhere, and say so."""
    kube, _reconciler = Fleet.ready()
    namespace = namespace or ""
    try:
        for obj in await kube.list(API_VERSION, "InferenceModel", namespace):
            if (obj.get("spec") or {}).get("pool") == name:
                await mark_unknown_pool(kube, obj)
    except KubeError as exc:
        log.warning("pool %s deleted; reporting on its models failed: %s", name, exc)


@kopf.on.resume(GROUP, "inferencemodels")
@kopf.on.create(GROUP, "inferencemodels")
@kopf.on.update(GROUP, "inferencemodels", field="spec")
async def model_changed(
    body: kopf.Body, name: str, namespace: str | None, old: Any, **_: Any
) -> None:
    """The model's Service, then a pass of its pool (and of the pool it left)."""
    kube, reconciler = Fleet.ready()
    namespace = namespace or ""
    model = _with_kind("InferenceModel", body)
    pool = model["spec"]["pool"]
    try:
        if await kube.get(API_VERSION, "InferencePool", namespace, pool) is None:
            await mark_unknown_pool(kube, model)
            log.warning("model %s: pool %s does not exist", name, pool)
        else:
            await kube.apply(model_service(Owner.of(model), pool))
            reconciler.services.add((model["metadata"]["uid"], pool))
    except KubeError as exc:
        raise kopf.TemporaryError(f"model {name}: {exc}", delay=5) from exc
    Fleet.poke(namespace, pool)
    if isinstance(old, dict):
        Fleet.poke(namespace, (old.get("spec") or old).get("pool"))


@kopf.on.event(GROUP, "inferencemodels")
async def model_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A deleted model leaves its pool's next pass, which unloads it everywhere."""
    if type == "DELETED":
        Fleet.poke(namespace or "", (body.get("spec") or {}).get("pool"))


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A pool pod appeared, got its IP, or is terminating: the routes must follow now."""
    Fleet.poke(
        namespace or "", body["metadata"].get("labels", {}).get("app.kubernetes.io/instance")
    )
