"""The models a runtime hosts, and convergence towards the desired document.

``apply`` replaces the desired list; a background pass loads what is new
(with warm-up, before it is routable), applies changed settings in place,
reloads what changed in substance beside the old copy and swaps, and drains
then unloads what was removed. Requests keep flowing to everything else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from modelfleet.runtime.config import ModelConfig, ServerConfig
from modelfleet.runtime.errors import ModelLoadError
from modelfleet.runtime.executor import Executor
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.loader import resolve_source
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.serving import heap
from modelfleet.serving.errors import NotFound, Unavailable

log = logging.getLogger("modelfleet.runtime")
MiB = 1024 * 1024


@functools.lru_cache(maxsize=1024)
def version_order(version: str) -> tuple[Any, ...]:
    """Natural order: "10" after "9", "v2" after "v1" (memoized: every request that
    names no version asks it of each version of its model)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version) if p)


class Repository:
    def __init__(self, server: ServerConfig, worker: Executor, metrics: RuntimeMetrics) -> None:
        self.server = server
        self.worker = worker
        self.metrics = metrics
        self.models: dict[tuple[str, str], HostedModel] = {}
        """Routable and loading models, by (name, version)."""
        self.failed: dict[tuple[str, str], HostedModel] = {}
        self.draining: list[HostedModel] = []
        self.desired: tuple[ModelConfig, ...] = ()
        self._lock = asyncio.Lock()
        self._pass: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lookup ------------------------------------------------------------------

    def resolve(self, name: str, version: str | None) -> HostedModel:
        """The ready model to serve, or 404 (unknown) / 503 (not ready)."""
        if version is not None:
            model = self.models.get((name, version))
            if model is None:
                known = self.versions_of(name)
                if not known:
                    raise NotFound(f"unknown model '{name}'")
                raise NotFound(
                    f"model '{name}' has no version '{version}'; known: {', '.join(known)}"
                )
            return model
        candidates = [m for (n, _), m in self.models.items() if n == name]
        if not candidates:
            if any(n == name for n, _ in self.failed):
                failed = next(m for (n, _), m in self.failed.items() if n == name)
                raise Unavailable(f"model '{name}' failed to load: {failed.reason}")
            raise NotFound(f"unknown model '{name}'")
        ready = [m for m in candidates if m.state is State.READY]
        pool = ready or candidates
        return max(pool, key=lambda m: version_order(m.config.version))

    def versions_of(self, name: str) -> list[str]:
        return sorted((v for n, v in self.models if n == name), key=version_order)

    def all_models(self) -> Iterable[HostedModel]:
        yield from self.models.values()
        yield from self.failed.values()
        yield from self.draining

    def loading(self) -> bool:
        return any(m.state in (State.LOADING, State.WARMING) for m in self.models.values())

    def memory_in_use(self) -> int:
        return sum(m.memory_bytes for m in self.models.values()) + sum(
            m.memory_bytes for m in self.draining
        )

    # -- convergence ---------------------------------------------------------------

    async def apply(self, models: tuple[ModelConfig, ...], *, wait: bool = False) -> None:
        """Makes ``models`` the desired list; converges in the background."""
        self.desired = models
        task = asyncio.create_task(self._converge(), name="modelfleet-converge")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            await task

    async def _converge(self) -> None:
        async with self._lock:
            desired = {m.key: m for m in self.desired}
            for key in [k for k in self.models if k not in desired]:
                await self._unload(self.models.pop(key))
            for key in [k for k in self.failed if k not in desired]:
                self.failed.pop(key)
                self.metrics.forget(*key)
            loads = []
            for key, config in desired.items():
                current = self.models.get(key)
                failed = self.failed.get(key)
                if current is None:
                    if failed is not None and failed.config == config:
                        continue  # same config failed before: don't loop on it
                    self.failed.pop(key, None)
                    loads.append(self._load(config))
                elif current.needs_reload(config):
                    loads.append(self._reload(current, config))
                elif current.config != config:
                    current.apply_settings(config)
                    log.info("model '%s' version '%s': settings updated", *key)
            await asyncio.gather(*loads)

    async def load_one(self, config: ModelConfig) -> HostedModel:
        """Loads one model now (the repository extension's load); returns it."""
        self.failed.pop(config.key, None)  # an explicit load retries a failed one
        others = tuple(m for m in self.desired if m.key != config.key)
        await self.apply((*others, config), wait=True)
        model = self.models.get(config.key) or self.failed.get(config.key)
        assert model is not None
        return model

    async def unload_name(self, name: str) -> list[str]:
        versions = [m.version for m in self.desired if m.name == name]
        if not versions and not self.versions_of(name):
            raise NotFound(f"unknown model '{name}'")
        await self.apply(tuple(m for m in self.desired if m.name != name), wait=True)
        return versions

    async def _reload(self, current: HostedModel, config: ModelConfig) -> None:
        log.info("model '%s' version '%s': reloading (source or signature changed)", *config.key)
        fresh = await self._prepare(config)
        if fresh.state is State.READY:
            self.models[config.key] = fresh
            self.worker.add(fresh)
            await self._unload(current)
        else:
            self.failed[config.key] = fresh  # the old copy keeps serving

    async def _load(self, config: ModelConfig) -> None:
        model = HostedModel(config, self.worker, default_level=self.server.default_priority_level)
        self.models[config.key] = model
        prepared = await self._prepare(config, model)
        if prepared.state is State.READY:
            self.worker.add(prepared)
        else:
            self.models.pop(config.key, None)
            self.failed[config.key] = prepared

    async def _prepare(self, config: ModelConfig, model: HostedModel | None = None) -> HostedModel:
        """Loads and warms a model without making it routable yet."""
        name, version = config.key
        model = model or HostedModel(
            config, self.worker, default_level=self.server.default_priority_level
        )
        started = time.perf_counter()
        try:
            self._check_budget(config)
            measured = await self.worker.load(model, self.server.model_store)
            budget = int(self.server.memory_budget_mb * MiB)
            if self.memory_in_use() + measured > budget:
                raise ModelLoadError(
                    f"memory budget exceeded: model '{name}' version '{version}' needs "
                    f"{measured / MiB:.1f} MiB, {self.memory_in_use() / MiB:.1f} of "
                    f"{budget / MiB:.0f} MiB are in use"
                )
            model.memory_bytes = measured
            model.state = State.WARMING
            warm = model.warmup_batches()
            for i, arrays in enumerate(warm):
                began = time.perf_counter()
                await self.worker.warm(model, arrays)
                if i or len(warm) == 1:  # a first estimate for admission (not the cold pass)
                    model.service.record(len(arrays[0]), time.perf_counter() - began)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            await self.worker.unload(model)
            model.state, model.reason, model.memory_bytes = State.FAILED, reason, 0
            log.error("model '%s' version '%s' failed to load: %s", name, version, reason)
            return model
        model.state = State.READY
        model.loaded_at = time.time()
        heap.settle()  # the loaded module out of the full collections' walk
        self.metrics.model_ready.labels(name, version).set(1)
        self._update_memory()
        log.info(
            "model '%s' version '%s' ready in %.2f s (%.1f MiB)",
            name, version, time.perf_counter() - started, model.memory_bytes / MiB,
        )  # fmt: skip
        return model

    def _check_budget(self, config: ModelConfig) -> None:
        estimate = (
            config.memory_mb * MiB
            if config.memory_mb
            else resolve_source(config, self.server.model_store).stat().st_size
        )
        budget = self.server.memory_budget_mb * MiB
        if self.memory_in_use() + estimate > budget:
            raise ModelLoadError(
                f"memory budget exceeded: model '{config.name}' version '{config.version}' "
                f"needs about {estimate / MiB:.1f} MiB, {self.memory_in_use() / MiB:.1f} of "
                f"{budget / MiB:.0f} MiB are in use"
            )

    async def _unload(self, model: HostedModel) -> None:
        """Drains (queued and in-flight requests finish) and frees the model."""
        name, version = model.key
        model.state = State.DRAINING
        self.draining.append(model)
        log.info("model '%s' version '%s' draining (%d in flight)", name, version, model.inflight)
        await model.idle.wait()
        self.worker.remove(model)
        self.draining.remove(model)
        await self.worker.unload(model)
        heap.release()  # its module may hold cycles: the collector may free them now
        model.memory_bytes = 0
        if not any(m.key == model.key for m in self.models.values()):
            self.metrics.forget(name, version)
        self._update_memory()
        log.info("model '%s' version '%s' unloaded", name, version)

    def _update_memory(self) -> None:
        self.metrics.device_memory.set(self.memory_in_use())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
