"""Kubernetes schema facts that pydantic has no keyword for, declared on the models.

The spec models say everything the CRDs say (``crdgen`` writes the CRDs from them):
pydantic's own keywords carry types, defaults, ranges, lengths, patterns and enums;
``k8s(...)`` adds the rest (kubebuilder's markers, in Python)::

    shape: tuple[int, ...] = Field(json_schema_extra=k8s(list_type="atomic", rules=[
        Rule("self.all(d, d != 0)", "shape dimensions must be positive or -1")]))

On a model, ``model_config = ConfigDict(json_schema_extra=k8s(rules=[...]))`` puts the
rules on the object the model describes (where ``self`` is that object).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, JsonValue

JsonDict = dict[str, JsonValue]
"""A JSON object, as pydantic's json_schema_extra takes it."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A CEL rule the API server evaluates on create and update (x-kubernetes-validations)."""

    rule: str
    """The CEL expression; ``self`` is the object or field the rule is declared on."""
    message: str
    """What ``kubectl apply`` prints when the rule fails: the field, and what to do."""
    field_path: str | None = None
    """The field the error names, relative to ``self`` (``.canary.version``)."""
    reason: str | None = None
    """FieldValueInvalid (the API server's default), FieldValueRequired, ..."""

    def as_json(self) -> JsonDict:
        out: JsonDict = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP
"""``k8s(default=KEEP)``: the API server stores the model's own default."""


def k8s(
    *,
    rules: Sequence[Rule] = (),
    default: JsonValue | _Keep = KEEP,
    list_type: Literal["atomic", "set", "map"] | None = None,
    map_keys: Sequence[str] = (),
    preserve_unknown: bool = False,
    format: str | None = None,
) -> Callable[[JsonDict], None]:
    """A ``json_schema_extra`` adding Kubernetes' schema extensions to a field or a model.

    ``default``: what the API server stores when the field is absent, where it differs
    from the model's default; ``None`` stores nothing (the model's default then only
    applies when the operator parses the spec). A field whose default is a model
    instance gets ``{}`` without this, and the API server fills in the nested defaults.
    ``map_keys`` implies ``list_type="map"``.
    """
    extra: JsonDict = {}
    if format:
        extra["format"] = format
    if map_keys:
        extra["x-kubernetes-list-type"] = "map"
        extra["x-kubernetes-list-map-keys"] = list(map_keys)
    elif list_type:
        extra["x-kubernetes-list-type"] = list_type
    if preserve_unknown:
        extra["x-kubernetes-preserve-unknown-fields"] = True
    if rules:
        extra["x-kubernetes-validations"] = [r.as_json() for r in rules]

    def update(schema: JsonDict) -> None:
        schema.update(extra)
        if default is None:
            schema.pop("default", None)
        elif not isinstance(default, _Keep):
            schema["default"] = default

    return update


Int64 = Annotated[int, Field(json_schema_extra=k8s(format="int64"))]
"""An integer the API server keeps as int64 (generations, counters)."""
