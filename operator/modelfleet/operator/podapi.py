"""The data plane's admin APIs as the operator uses them: read a runtime's state,
replace its desired models, read and replace a gateway's routes.

A pod that does not answer is not an error of the pass: it is reported (None or
False) and the next pass tries again.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from pydantic import ValidationError

from modelfleet.operator.manifests import ADMIN_PORT
from modelfleet.operator.observed import RuntimeState
from modelfleet.operator.spec import OMITTED_WHEN_UNSET

log = logging.getLogger("modelfleet.operator")
TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


class PodAPI:
    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"}

    async def _get(self, url: str) -> Any:
        try:
            async with self.session.get(url, headers=self.headers, timeout=TIMEOUT) as resp:
                if resp.status != 200:
                    log.warning("GET %s answered %d", url, resp.status)
                    return None
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("GET %s failed: %r", url, exc)
            return None

    async def _put(self, url: str, body: dict[str, Any]) -> bool:
        try:
            async with self.session.put(url, json=body, headers=self.headers, timeout=TIMEOUT) as resp:  # fmt: skip
                if resp.status >= 300:
                    log.warning(
                        "PUT %s answered %d: %s", url, resp.status, (await resp.text())[:300]
                    )
                return resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("PUT %s failed: %r", url, exc)
            return False

    async def runtime_state(self, ip: str) -> RuntimeState | None:
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/state")
        if data is None:
            return None
        try:
            return RuntimeState.model_validate(data)
        except ValidationError as exc:
            log.warning("runtime at %s sent a state the operator cannot read: %s", ip, exc)
            return None

    async def put_runtime_models(self, ip: str, models: list[dict[str, object]]) -> bool:
        return await self._put(f"http://{ip}:{ADMIN_PORT}/admin/state", {"models": models})

    async def gateway_routes(self, ip: str) -> dict[str, Any] | None:
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/routes")
        return data.get("models") if isinstance(data, dict) else None

    async def put_gateway_routes(self, ip: str, models: dict[str, dict[str, object]]) -> bool:
        return await self._put(f"http://{ip}:{ADMIN_PORT}/admin/routes", {"models": models})


def covers(have: Any, want: Any) -> bool:
    """Whether ``have`` (a document as the pod reports it, every default filled in)
    says everything ``want`` says. Lists compare item by item."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list | tuple):
        return (
            isinstance(have, list | tuple)
            and len(have) == len(want)
            and all(covers(h, w) for h, w in zip(have, want, strict=True))
        )
    if isinstance(want, float | int) and isinstance(have, float | int):
        return float(have) == float(want)
    return bool(have == want)


def _at(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        document = document.get(key) if isinstance(document, dict) else None
    return document


def still_set(have: dict[str, Any], want: dict[str, object]) -> bool:
    """Whether ``have`` still sets an optional field that ``want`` leaves out (removed
    from the spec: ``covers`` alone only compares what ``want`` says)."""
    return any(_at(want, p) is None and _at(have, p) is not None for p in OMITTED_WHEN_UNSET)


def same_models(current: list[dict[str, Any]], desired: list[dict[str, object]]) -> bool:
    """Whether a runtime's desired models already say what the operator wants."""
    by_key = {(m.get("name"), m.get("version")): m for m in current}
    if set(by_key) != {(m["name"], m["version"]) for m in desired}:
        return False
    for want in desired:
        have = by_key[(want["name"], want["version"])]
        if not covers(have, want) or still_set(have, want):
            return False
    return True


def same_routes(current: dict[str, Any] | None, desired: dict[str, dict[str, object]]) -> bool:
    if current is None or set(current) != set(desired):
        return False
    return all(covers(current[name], route) for name, route in desired.items())
