"""Typed views of the resources' specs, parsed at the edge (the CRD schema has
already validated and defaulted them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

GROUP, VERSION = "modelfleet.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_MEMORY_MB = 1000.0


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Source(_Spec):
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    format: str = "auto"
    architecture: str | None = None
    trusted: bool = False


class Canary(_Spec):
    version: str
    source: Source
    weight: int = 0
    replicas: int = 1


class ModelSpec(_Spec):
    pool: str
    priority: int = 0
    version: str
    source: Source
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    memory_mb: float | None = Field(default=None, alias="memoryMB")
    replicas: int = 1
    batching: dict[str, Any] = Field(default_factory=dict)
    queue: dict[str, Any] = Field(default_factory=dict)
    rate_limit: dict[str, Any] | None = Field(default=None, alias="rateLimit")
    cache: dict[str, Any] = Field(default_factory=dict)
    warmup: dict[str, Any] = Field(default_factory=dict)
    canary: Canary | None = None


class Replicas(_Spec):
    min: int = 1
    max: int = 1


class Resources(_Spec):
    gpu: int = 1
    cpu: str = "2"
    memory: str = "8Gi"


class GatewaySpec(_Spec):
    replicas: int = 1
    max_concurrency: int = Field(default=64, alias="maxConcurrency")


class PoolSpec(_Spec):
    replicas: Replicas = Replicas()
    resources: Resources = Resources()
    memory_budget_mb: float = Field(default=16000, alias="memoryBudgetMB")
    image: str = "modelfleet/runtime:0.1.0"
    model_store: dict[str, Any] = Field(default_factory=dict, alias="modelStore")
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    gateway: GatewaySpec = GatewaySpec()


def _snake(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        out[snake] = value
    return out


def runtime_model(name: str, spec: ModelSpec, version: str, source: Source) -> dict[str, Any]:
    """One entry of a runtime pod's desired-state document (docs/contracts.md)."""
    entry: dict[str, Any] = {
        "name": name,
        "version": version,
        "source": source.path or source.url,
        "format": source.format,
        "trusted": source.trusted,
        "priority": spec.priority,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
        "batching": _snake(spec.batching),
        "queue": _snake(spec.queue),
        "cache": _snake(spec.cache),
        "warmup": _snake(spec.warmup),
    }
    if source.architecture:
        entry["architecture"] = source.architecture
    if source.sha256:
        entry["sha256"] = source.sha256
    if spec.rate_limit:
        entry["rate_limit"] = _snake(spec.rate_limit)
    if spec.memory_mb:
        entry["memory_mb"] = spec.memory_mb
    return entry
