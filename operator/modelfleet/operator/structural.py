"""A pydantic model's JSON schema as a Kubernetes structural schema.

The API server takes a subset of OpenAPI v3.0: every node has a type, references
are inlined, an optional field is simply not required (no ``anyOf`` with null), an
exclusive bound is a boolean beside the bound, and no ``title``. Defaults are what
the API server stores: a field whose default is a model instance gets ``{}`` (the
nested defaults then apply), ``None`` stores nothing. Descriptions are the field
docstrings, else the model's docstring, on one line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

ORDER = (
    "type", "format", "description", "enum", "default", "minimum", "exclusiveMinimum",
    "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "minProperties", "maxProperties", "required", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations", "items", "additionalProperties", "properties",
)  # fmt: skip
"""Every keyword a node may have, in the order the CRDs list them."""


class SchemaError(ValueError):
    """A model uses something a structural schema cannot say; the message names the field."""


class _Generator(GenerateJsonSchema):
    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def encode_default(self, dft: Any) -> Any:
        return {} if isinstance(dft, BaseModel) else super().encode_default(dft)

    def sort(self, value: JsonSchemaValue, parent_key: str | None = None) -> JsonSchemaValue:
        return value  # keep each rule's keys as declared (rule, message, fieldPath, reason)


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model``, with its camelCase field names."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_Generator)
    return _node(raw, raw.get("$defs", {}), model.__name__)


def _node(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        rules = [*target.get("x-kubernetes-validations", []),
                 *node.get("x-kubernetes-validations", [])]  # fmt: skip
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if rules:
            node["x-kubernetes-validations"] = rules
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and value is True:
            continue  # dict[str, object]: preserve-unknown says it, if wanted
        if key not in ORDER:
            raise SchemaError(f"{path}: {key!r} has no place in a structural schema")
        if key in ("exclusiveMinimum", "exclusiveMaximum") and value is not True:
            out[key.replace("exclusiveM", "m")] = _number(value)
            value = True
        elif key == "description":
            value = " ".join(value.split())
        elif key == "properties":
            value = {k: _node(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            value = _node(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            value = _node(value, defs, f"{path}{{}}")
        elif key in ("default", "minimum", "maximum"):
            value = _number(value)
        out[key] = value
    if "type" not in out:
        raise SchemaError(f"{path}: no type (an Optional of two types, or Any?)")
    return {key: out[key] for key in sorted(out, key=ORDER.index)}


def _number(value: Any) -> Any:
    """2.0 -> 2, so that a float field's default reads as the CRDs always wrote it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value
