"""kopf handlers: they apply children and trigger passes; the timer is the
level-triggered loop that makes the cluster converge whatever happened."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import aiohttp
import kopf

from modelfleet.operator.kube import Kube, KubeError
from modelfleet.operator.manifests import model_service, pool_children, token_secret
from modelfleet.operator.reconcile import converge
from modelfleet.operator.spec import API_VERSION, GROUP

log = logging.getLogger("modelfleet.operator")
CONVERGE_INTERVAL_S = 2.0


class Clients:
    kube: Kube | None = None
    session: aiohttp.ClientSession | None = None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if Clients.kube is not None:
        await Clients.kube.close()
    if Clients.session is not None:
        await Clients.session.close()


async def clients(logger: Any) -> tuple[Kube, aiohttp.ClientSession]:
    if Clients.kube is None:
        info = kopf.login_with_service_account(
            settings=kopf.OperatorSettings()
        ) or kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        if info is None:
            raise kopf.PermanentError("no Kubernetes credentials (service account or kubeconfig)")
        Clients.kube = Kube(info)
        Clients.session = aiohttp.ClientSession()
    assert Clients.session is not None
    return Clients.kube, Clients.session


def _obj(kind: str, body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": dict(body["metadata"]),
        "spec": dict(body["spec"]),
    }


@kopf.on.resume(GROUP, "inferencepools")
@kopf.on.create(GROUP, "inferencepools")
@kopf.on.update(GROUP, "inferencepools", field="spec")
async def pool_changed(body: kopf.Body, logger: Any, **_: Any) -> None:
    kube, _session = await clients(logger)
    pool = _obj("InferencePool", body)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if await kube.get("v1", "Secret", namespace, f"{name}-admin-token") is None:
        await kube.apply(token_secret(pool, secrets.token_urlsafe(32)))
    try:
        for child in pool_children(pool):
            await kube.apply(child)
    except KubeError as exc:
        raise kopf.TemporaryError(f"applying the pool's children failed: {exc}", delay=5) from exc
    logger.info("pool %s: children applied", name)


@kopf.timer(GROUP, "inferencepools", interval=CONVERGE_INTERVAL_S, idle=0)
async def pool_converge(body: kopf.Body, logger: Any, **_: Any) -> None:
    kube, session = await clients(logger)
    pool = {"apiVersion": API_VERSION, "kind": "InferencePool", "metadata": dict(body["metadata"]),
            "spec": dict(body["spec"]), "status": dict(body.get("status", {}))}  # fmt: skip
    try:
        await converge(kube, session, pool)
    except KubeError as exc:
        if exc.status == 409:
            return  # a conflict: the next pass retries
        raise kopf.TemporaryError(str(exc), delay=CONVERGE_INTERVAL_S) from exc


@kopf.on.resume(GROUP, "inferencemodels")
@kopf.on.create(GROUP, "inferencemodels")
@kopf.on.update(GROUP, "inferencemodels", field="spec")
async def model_changed(body: kopf.Body, logger: Any, patch: kopf.Patch, **_: Any) -> None:
    kube, _session = await clients(logger)
    model = _obj("InferenceModel", body)
    pool_name = body["spec"]["pool"]
    pool = await kube.get(API_VERSION, "InferencePool", body["metadata"]["namespace"], pool_name)
    if pool is None:
        patch.status["conditions"] = [{
            "type": "Degraded", "status": "True", "reason": "UnknownPool",
            "message": f"InferencePool '{pool_name}' does not exist in this namespace",
        }]  # fmt: skip
        raise kopf.TemporaryError(f"pool {pool_name} not found", delay=10)
    await kube.apply(model_service(model, pool_name))


@kopf.on.delete(GROUP, "inferencemodels")
async def model_deleted(body: kopf.Body, logger: Any, **_: Any) -> None:
    """The next pass of its pool no longer lists the model: every pod unloads it."""
    logger.info("model %s deleted; its pool unloads it on the next pass", body["metadata"]["name"])
