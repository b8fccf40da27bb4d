"""The data plane's admin APIs as the operator uses them: read a runtime's state,
replace its desired models, read and replace a gateway's routes.

A pod that does not answer is not an error of the pass: it is reported (None or
False) and the next pass tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from pydantic import ValidationError

from modelfleet.api.routes import ModelRoute, RoutesDocument
from modelfleet.api.runtime_document import ModelConfig
from modelfleet.operator.manifests import ADMIN_PORT
from modelfleet.operator.observed import RuntimeState, known, model_entry

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

    async def put_runtime_models(self, ip: str, models: Sequence[ModelConfig]) -> bool:
        body = {"models": [document_entry(m) for m in models]}
        return await self._put(f"http://{ip}:{ADMIN_PORT}/admin/state", body)

    async def gateway_routes(self, ip: str) -> dict[str, Any] | None:
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/routes")
        return data.get("models") if isinstance(data, dict) else None

    async def gateway_shadow(self, ip: str) -> dict[str, dict[str, Any]] | None:
        """A gateway's shadow comparisons so far: model -> {version, compared, failed,
        skipped, agreement, worst_abs_diff, worst_rel_diff} (``GET /admin/shadow``)."""
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/shadow")
        if not isinstance(data, dict):
            return None
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    async def gateway_demand(self, ip: str) -> dict[str, dict[str, Any]] | None:
        """A gateway's requests held for models scaled to zero: model -> {waiting, held,
        last_held_at} (``GET /admin/demand``)."""
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/demand")
        if not isinstance(data, dict):
            return None
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    async def gateway_shed(self, ip: str) -> dict[str, dict[str, int]] | None:
        """Infer requests a gateway refused since it started: model -> version -> count
        (``GET /admin/shed``)."""
        data = await self._get(f"http://{ip}:{ADMIN_PORT}/admin/shed")
        if not isinstance(data, dict):
            return None
        return {
            str(model): {str(v): n for v, n in versions.items() if isinstance(n, int)}
            for model, versions in data.items()
            if isinstance(versions, dict)
        }

    async def put_gateway_routes(self, ip: str, models: Mapping[str, ModelRoute]) -> bool:
        body = {"models": routes_entries(models)}
        return await self._put(f"http://{ip}:{ADMIN_PORT}/admin/routes", body)


def document_entry(model: ModelConfig) -> dict[str, Any]:
    """A model entry as the operator writes it (the PUT body, the state ConfigMap):
    the fields it set, so that optional ones the spec leaves out are left out."""
    return model.model_dump(mode="json", exclude_unset=True)


def routes_entries(models: Mapping[str, ModelRoute]) -> dict[str, Any]:
    """The routes document's ``models`` as the operator writes them (the fields it set)."""
    return {name: r.model_dump(mode="json", exclude_unset=True) for name, r in models.items()}


def same_models(current: Sequence[Mapping[str, Any]], desired: Sequence[ModelConfig]) -> bool:
    """Whether a runtime's desired models (as it reports them, every default filled
    in) are the operator's: the same entries, compared as typed models, so that a
    default the runtime fills in is no difference and an optional field the spec no
    longer sets (``batching.pad``, ``rate_limit``) is one."""
    have = [model_entry(m) for m in current]
    if any(m is None for m in have) or len(have) != len(desired):
        return False
    return {m.key: m for m in have if m is not None} == {m.key: m for m in desired}


def same_routes(current: Mapping[str, Any] | None, desired: Mapping[str, ModelRoute]) -> bool:
    """Whether a gateway's routes (as it reports them) are the operator's, compared as
    the gateway's typed models."""
    have = None if current is None else known(RoutesDocument, {"models": current})
    return have is not None and have.models == dict(desired)
