"""A small asyncio Kubernetes client: server-side apply, get, list, status patch, events.

It reuses kopf's own login (kubeconfig or in-cluster service account), so the
operator needs no second client library and authenticates exactly as kopf does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import ssl
import tempfile
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

FIELD_MANAGER = "modelfleet-operator"
_PATHS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("modelfleet.io/v1alpha1", "InferencePool"): "inferencepools",
    ("modelfleet.io/v1alpha1", "InferenceModel"): "inferencemodels",
}


TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)
"""No call to the API server waits longer than this (a watch is kopf's, not ours)."""
RETRIES = 3
"""Attempts for a call that failed in a way worth retrying (429, 5xx, no answer)."""
BACKOFF_S = 0.2
"""First pause between attempts; it doubles each time (a 429's Retry-After wins)."""


class KubeError(Exception):
    """A failed call: ``status`` is the HTTP status, 0 when no answer came."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.retry_after_s = retry_after_s


class NotFound(KubeError):
    """404: the object (or its kind) does not exist."""


class Conflict(KubeError):
    """409: a conflicting write (resourceVersion, or an object that already exists)."""


class TooManyRequests(KubeError):
    """429: the API server's priority and fairness turned the call away; retry later."""


class ServerError(KubeError):
    """5xx, or no answer at all (status 0): worth retrying."""


def kube_error(status: int, message: str, retry_after_s: float | None = None) -> KubeError:
    """The typed error for an HTTP status."""
    kind: type[KubeError] = KubeError
    if status == 404:
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif status == 429:
        kind = TooManyRequests
    elif status == 0 or status >= 500:
        kind = ServerError
    return kind(status, message, retry_after_s)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PATHS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class Kube:
    """Talks to the API server with the credentials kopf logs in with; on a 401
    (a rotated service-account token) it logs in again once and retries."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo | None]) -> None:
        self.login = login
        self.server = ""
        self.session: aiohttp.ClientSession | None = None
        self._files: list[str] = []

    def _connect(self) -> aiohttp.ClientSession:
        info = self.login()
        if info is None:
            raise KubeError(401, "no Kubernetes credentials (service account or kubeconfig)")
        self.server = info.server.rstrip("/")
        context = ssl.create_default_context()
        if info.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if info.ca_path:
            context.load_verify_locations(cafile=info.ca_path)
        elif info.ca_data:
            context.load_verify_locations(cadata=_text(info.ca_data))
        cert, key = info.certificate_path, info.private_key_path
        if info.certificate_data and info.private_key_data:
            cert, key = self._tmp(info.certificate_data), self._tmp(info.private_key_data)
        if cert and key:
            context.load_cert_chain(cert, key)
        headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), headers=headers, timeout=TIMEOUT
        )

    def _tmp(self, data: bytes | str) -> str:
        raw = data if isinstance(data, bytes) else data.encode()
        if not raw.startswith(b"-----"):
            raw = base64.b64decode(raw)
        fd, name = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        self._files.append(name)
        return name

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        for name in self._files:
            with contextlib.suppress(OSError):
                os.unlink(name)
        self._files.clear()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call, retried with back-off on 429, 5xx and no answer (``RETRIES``
        attempts; a POST only on 429, when the server did not act on it), and once
        after logging in again on a 401 (a rotated service-account token)."""
        relogged = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(method, path, **kwargs)
            except KubeError as exc:
                if exc.status == 401 and not relogged:
                    relogged = True
                    await self.close()
                    continue
                retryable = isinstance(exc, TooManyRequests) or (
                    isinstance(exc, ServerError) and method != "POST"
                )
                if not retryable or attempt >= RETRIES:
                    raise
                await asyncio.sleep(exc.retry_after_s or BACKOFF_S * 2 ** (attempt - 1))

    async def _once(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.session is None:
            self.session = self._connect()
        try:
            async with self.session.request(method, self.server + path, **kwargs) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise kube_error(0, f"{method} {path}: {exc!r}") from exc
        if status >= 400:
            raise kube_error(status, body.decode(errors="replace")[:500], retry_after)
        return json.loads(body) if body else None

    async def apply(self, obj: dict[str, Any]) -> Any:
        """Server-side apply: create or update idempotently, owning only our fields."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return await self._call(
            "PATCH", path, data=json.dumps(obj),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
        )  # fmt: skip

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        try:
            return await self._call("GET", _path(api_version, kind, namespace, name))
        except NotFound:
            return None

    async def list(
        self, api_version: str, kind: str, namespace: str, selector: str = ""
    ) -> list[Any]:
        params = {"labelSelector": selector} if selector else {}
        found = await self._call("GET", _path(api_version, kind, namespace), params=params)
        return list(found.get("items", []))

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]
    ) -> Any:
        """A JSON merge patch of the object (with ``metadata.resourceVersion`` in
        ``body``, a conflicting write meanwhile makes it fail with 409)."""
        return await self._call(
            "PATCH", _path(api_version, kind, namespace, name), data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )  # fmt: skip

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:  # fmt: skip
        try:
            await self._call(
                "PATCH", _path(api_version, kind, namespace, name) + "/status",
                data=json.dumps({"status": status}),
                headers={"Content-Type": "application/merge-patch+json"},
            )  # fmt: skip
        except NotFound:
            pass  # deleted meanwhile: nothing to report on

    async def event(
        self, obj: dict[str, Any], reason: str, message: str, kind: str = "Normal"
    ) -> None:
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1000], "type": kind,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": FIELD_MANAGER},
        }  # fmt: skip
        try:
            await self._call("POST", _path("v1", "Event", meta["namespace"]), data=json.dumps(event),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        except KubeError:
            pass  # events are best effort


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
