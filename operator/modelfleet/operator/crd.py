"""Both resources as kubectl knows them: names, printer columns, the rule on the name.

The schema of ``spec`` and ``status`` comes from the models (``spec.py``,
``statustypes.py``); what a CRD says besides it is declared here, and
``crdgen`` writes the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from modelfleet.operator.markers import Rule
from modelfleet.operator.spec import GROUP, ModelSpec, PoolSpec
from modelfleet.operator.statustypes import ModelStatus, PoolStatus


@dataclass(frozen=True, slots=True)
class Column:
    """A column of ``kubectl get`` (additionalPrinterColumns)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        return out | ({"description": self.description} if self.description else {})


@dataclass(frozen=True, slots=True)
class Scale:
    """The scale subresource: where the wanted and the actual count live."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None
    """A status field with a label selector in string form; an HPA refuses a target without."""

    def as_json(self) -> dict[str, Any]:
        out = {"specReplicasPath": self.spec_replicas_path,
               "statusReplicasPath": self.status_replicas_path}  # fmt: skip
        if self.label_selector_path:
            out["labelSelectorPath"] = self.label_selector_path
        return out


AGE = Column("Age", "date", ".metadata.creationTimestamp")


@dataclass(frozen=True, slots=True)
class Kind:
    """One namespaced custom resource with a status subresource."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    """What ``kubectl explain <kind>`` prints first."""
    spec: type[BaseModel]
    status: type[BaseModel]
    rules: tuple[Rule, ...]
    """CEL rules on the whole object (``self.metadata``)."""
    columns: tuple[Column, ...]
    categories: tuple[str, ...] = ("modelfleet",)
    """``kubectl get modelfleet`` lists every kind of the category."""
    scale: Scale | None = None
    """The scale subresource (``kubectl scale``, HPA, KEDA), when the kind has one."""

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def dns_label(max_length: int, why: str) -> Rule:
    """metadata.name is a DNS label starting with a letter, as what it names requires."""
    rule = (
        f"self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && "
        f"size(self.metadata.name) <= {max_length}"
    )
    shorter = f"of at most {max_length} characters " if max_length < 63 else ""
    return Rule(rule, f"metadata.name must be a DNS label {shorter}that starts with a letter {why}")


POOL = Kind(
    kind="InferencePool",
    plural="inferencepools",
    short_names=("ipool",),
    description="A pool of GPU pods running the ModelFleet runtime, with a gateway in front. "
    "InferenceModels naming the pool are placed onto its pods by priority and memory.",
    spec=PoolSpec,
    status=PoolStatus,
    rules=(dns_label(40, "(it prefixes the pool's children)"),),
    columns=(
        Column("Min", "integer", ".spec.replicas.min", "Runtime pods always running."),
        Column("Max", "integer", ".spec.replicas.max", "Upper bound on runtime pods."),
        Column(
            "Desired",
            "integer",
            ".status.scaling.desiredPods",
            "Runtime pods the models' copies call for (when max > min).",
        ),
        Column("Ready", "integer", ".status.readyReplicas", "Runtime pods answering the operator."),
        Column("Models", "integer", ".status.models", "InferenceModels placed on this pool."),
        Column("GPUs/pod", "integer", ".spec.resources.gpu", "nvidia.com/gpu per runtime pod."),
        Column("Budget MB", "number", ".spec.memoryBudgetMB", "Device memory per pod for models."),
        AGE,
    ),
)

MODEL = Kind(
    kind="InferenceModel",
    plural="inferencemodels",
    short_names=("im",),
    description="A model served by an InferencePool. Clients call "
    "http://<name>.<namespace>.svc/v2/models/<name>/infer (Open Inference Protocol).",
    spec=ModelSpec,
    status=ModelStatus,
    rules=(dns_label(63, "(it also names the model's Service)"),),
    scale=Scale(".spec.replicas", ".status.readyReplicas", ".status.selector"),
    columns=(
        Column("Pool", "string", ".spec.pool", "The InferencePool hosting the model."),
        Column("Version", "string", ".spec.version", "The stable version."),
        Column("Canary", "string", ".spec.canary.version", "The canary version, if any."),
        Column(
            "Weight", "integer", ".spec.canary.weight", "Percent of traffic sent to the canary."
        ),
        Column(
            "Step",
            "string",
            ".status.analysis.summary",
            "The canary analysis: step and weight (2/3 25%), or how it ended.",
        ),
        Column(
            "Desired",
            "integer",
            ".status.desiredReplicas",
            "Copies of the stable version wanted (spec.replicas or the autoscaler's).",
        ),
        Column(
            "Ready", "integer", ".status.readyReplicas", "Ready replicas of the stable version."
        ),
        Column("Priority", "integer", ".spec.priority", "Model priority (higher first)."),
        AGE,
    ),
)

KINDS = (POOL, MODEL)
"""In the order the reference lists them: the pool first, as one creates it first."""
