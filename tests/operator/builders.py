"""Test builders: resources and observed pods, with overrides (jobset's MakeJobSet style)."""

from __future__ import annotations

from typing import Any

from modelfleet.operator.observed import PodView, RuntimeState
from modelfleet.operator.spec import ModelSpec, PoolSpec

MLP_SOURCE = {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}


def pool_obj(name: str = "gpu", namespace: str = "ml", **spec: Any) -> dict[str, Any]:
    base = {"replicas": {"min": 2, "max": 3}, "resources": {"gpu": 1, "cpu": "2", "memory": "8Gi"},
            "priorityClassName": "ml-high", "memoryBudgetMB": 2000}  # fmt: skip
    return {"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "spec": {**base, **spec}}  # fmt: skip


def model_spec_dict(**overrides: Any) -> dict[str, Any]:
    spec = {
        "pool": "gpu", "priority": 10, "version": "1", "replicas": 2, "source": MLP_SOURCE,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 1}, "memoryMB": 500,
    }  # fmt: skip
    return {**spec, **overrides}


def sequence_spec_dict(**overrides: Any) -> dict[str, Any]:
    """A sequence model: token ids and mask padded to buckets, a string input, a
    per-token output sliced back and a string output."""
    spec = model_spec_dict(
        inputs=[{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "mask", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "lang", "datatype": "BYTES", "shape": [-1, 1]}],
        outputs=[{"name": "states", "datatype": "FP32", "shape": [-1, -1, 8]},
                 {"name": "label", "datatype": "BYTES", "shape": [-1, 1]}],
        batching={"maxBatchSize": 32, "maxQueueDelayMs": 2,
                  "pad": {"inputs": {"ids": 0, "mask": 0}, "axis": 1,
                          "buckets": [32, 64, 128], "outputs": ["states"]}},
    )  # fmt: skip
    return {**spec, **overrides}


def model_obj(name: str = "mlp", namespace: str = "ml", **overrides: Any) -> dict[str, Any]:
    return {"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferenceModel",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
            "spec": model_spec_dict(**overrides)}  # fmt: skip


def model(**overrides: Any) -> ModelSpec:
    return ModelSpec.model_validate(model_spec_dict(**overrides))


def pool(**overrides: Any) -> PoolSpec:
    return PoolSpec.model_validate(pool_obj(**overrides)["spec"])


def pod(
    name: str, ip: str, states: dict[tuple[str, str], str] | None = None,
    desired: list[tuple[str, str]] | None = None, memory_mb: float = 100.0, reason: str = "",
) -> PodView:  # fmt: skip
    """A pod answering with these version states (its desired list defaults to them)."""
    states = states or {}
    observed = [{"name": n, "version": v, "state": s, "memory_mb": memory_mb,
                 "reason": reason if s == "failed" else "", "served": 3, "errors": 1}
                for (n, v), s in states.items()]  # fmt: skip
    wanted = desired if desired is not None else list(states)
    state = RuntimeState.model_validate({
        "desired": {"models": [{"name": n, "version": v} for n, v in wanted]},
        "actual": {"ready": True, "models": observed, "memory_in_use_mb": 10.0},
    })  # fmt: skip
    return PodView(name, ip, state)
