"""The CRDs as files: every field explained, CEL rules present, printer columns,
and every status field the operator writes declared (else the API server prunes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelfleet.operator.desired import plan
from modelfleet.operator.spec import ModelSpec
from modelfleet.operator.status import model_status, pool_status
from tests.operator.builders import (
    model,
    model_spec_dict,
    pod,
    pool,
    pool_obj,
    sequence_spec_dict,
)

ROOT = Path(__file__).resolve().parents[2]


def crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / name).read_text())  # type: ignore[no-any-return]


def schema(name: str) -> dict[str, Any]:
    return crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in node or path.endswith(".metadata") or not path else [path]
    for key, sub in node.get("properties", {}).items():
        missing += undescribed(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        missing += undescribed(node["items"], f"{path}[]")
    if (
        isinstance(node.get("additionalProperties"), dict)
        and "properties" in node["additionalProperties"]
    ):
        missing += undescribed(node["additionalProperties"], f"{path}{{}}")
    return missing


@pytest.mark.parametrize("name", ["inferencepool.yaml", "inferencemodel.yaml"])
def test_every_field_has_a_description_for_kubectl_explain(name: str) -> None:
    # Items of plain lists (pods, endpoints, shape) are described at the list level.
    missing = [p for p in undescribed(schema(name), "")
               if not p.endswith(("pods[]", "endpoints[]", "models[]", "shape[]", "draining[]"))]  # fmt: skip
    assert not missing, f"fields without a description: {missing}"


@pytest.mark.parametrize(
    ("name", "short"), [("inferencepool.yaml", "ipool"), ("inferencemodel.yaml", "im")]
)
def test_status_subresource_short_names_and_category(name: str, short: str) -> None:
    spec = crd(name)["spec"]
    assert spec["group"] == "modelfleet.io" and spec["versions"][0]["name"] == "v1alpha1"
    scale = {"scale": {"specReplicasPath": ".spec.replicas",
                       "statusReplicasPath": ".status.readyReplicas",
                       "labelSelectorPath": ".status.selector"}}  # fmt: skip
    assert spec["versions"][0]["subresources"] == {"status": {}} | (scale if short == "im" else {})
    assert short in spec["names"]["shortNames"] and "modelfleet" in spec["names"]["categories"]


def test_model_printer_columns_show_pool_version_canary_weight_ready_priority_age() -> None:
    columns = crd("inferencemodel.yaml")["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == [
        "Pool",
        "Version",
        "Canary",
        "Weight",
        "Step",
        "Desired",
        "Ready",
        "Priority",
        "Age",
    ]
    assert {c["name"]: c["jsonPath"] for c in columns}["Weight"] == ".spec.canary.weight"


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_model_cel_rules_guard_what_the_schema_alone_cannot() -> None:
    spec = schema("inferencemodel.yaml")["properties"]["spec"]
    assert "!has(self.canary) || self.canary.version != self.version" in rules(spec)
    source = spec["properties"]["source"]
    assert "has(self.path) != has(self.url)" in rules(source)
    assert "self.format != 'torchscript' || self.trusted" in rules(source)
    canary = spec["properties"]["canary"]["properties"]
    assert (canary["weight"]["minimum"], canary["weight"]["maximum"]) == (0, 100)
    assert spec["properties"]["batching"]["properties"]["maxBatchSize"]["minimum"] == 1
    assert spec["properties"]["inputs"]["x-kubernetes-list-map-keys"] == ["name"]
    messages = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert messages[0] == "canary.version must differ from version"
    assert [m.split(" must")[0] for m in messages[1:]] == [
        "shadow.version",
        "batching.pad.inputs",
        "batching.pad.outputs",
        "canary.analysis.shadow",
    ]


def test_pool_cel_rule_keeps_min_replicas_within_max() -> None:
    replicas = schema("inferencepool.yaml")["properties"]["spec"]["properties"]["replicas"]
    assert rules(replicas) == ["self.min <= self.max"]


def validator(name: str) -> jsonschema.Draft4Validator:
    """The structural part of the schema (the API server adds CEL on top)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("x-kubernetes")
                    and k != "default"}  # fmt: skip
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return jsonschema.Draft4Validator(strip(schema(name)))


def errors(name: str, obj: dict[str, Any]) -> list[str]:
    return sorted(
        ".".join(map(str, e.absolute_path)) + ": " + e.message
        for e in validator(name).iter_errors(obj)
    )


def test_the_schema_accepts_a_good_model_and_names_the_field_of_a_bad_one() -> None:
    good = {
        "spec": model_spec_dict(canary={"version": "2", "weight": 10, "source": {"path": "b.pt2"}})
    }
    assert errors("inferencemodel.yaml", good) == []
    bad = {"spec": model_spec_dict(batching={"maxBatchSize": 0}, optimize="compile",
                                   canary={"version": "2", "weight": 120, "source": {"path": "b.pt2"}})}  # fmt: skip
    found = errors("inferencemodel.yaml", bad)
    assert any(e.startswith("spec.batching.maxBatchSize") for e in found), found
    assert any(e.startswith("spec.canary.weight") for e in found), found
    assert any(e.startswith("spec.optimize") for e in found), found


def declared(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Paths in ``value`` that the schema does not declare (they would be pruned)."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        if "additionalProperties" in node:
            return [
                p
                for k, v in value.items()
                for p in declared(node["additionalProperties"], v, f"{path}.{k}")
            ]
        props = node.get("properties", {})
        out = [f"{path}.{k}" for k in value if k not in props]
        return out + [
            p for k, v in value.items() if k in props for p in declared(props[k], v, f"{path}.{k}")
        ]
    if isinstance(value, list):
        return [p for v in value for p in declared(node.get("items", {}), v, f"{path}[]")]
    return []


def test_every_status_field_the_operator_writes_is_declared() -> None:
    spec = model(
        canary={"version": "2", "weight": 25, "source": model_spec_dict()["source"]}, replicas=1
    )
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "failed"}, reason="boom"),
            pod("gpu-1", "127.1.0.3", {})]  # fmt: skip
    result = plan(pool(), {"mlp": spec}, pods)
    report = result.reports["mlp"]
    report.versions[0].unplaced = "evicted by other version 1 (priority 100)"
    report.versions[0].evicted_by = ("other", "1")
    status = model_status(
        report, "http://mlp.ml.svc/v2/models/mlp/infer", {}, 1, "2026-01-01T00:00:00Z"
    )
    assert "lastFailure" in status and status["evictedBy"]
    model_schema = schema("inferencemodel.yaml")["properties"]["status"]
    assert declared(model_schema, status, "status") == []
    pool_st = pool_status(pods, ["gpu-2"], result.reports, {}, 1, "2026-01-01T00:00:00Z")
    assert declared(schema("inferencepool.yaml")["properties"]["status"], pool_st, "status") == []


KEYWORDS = {
    "type", "description", "default", "minimum", "maximum", "exclusiveMinimum", "enum", "format",
    "pattern", "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "items", "properties", "required",
    "additionalProperties", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip


def unknown_keywords(node: dict[str, Any], path: str) -> list[str]:
    out = [f"{path}: {key!r}" for key in node if key not in KEYWORDS]
    for key, sub in node.get("properties", {}).items():
        out += unknown_keywords(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += unknown_keywords(node[key], f"{path}.{key}")
    return out


@pytest.mark.parametrize("name", ["inferencepool.yaml", "inferencemodel.yaml"])
def test_the_schema_uses_only_known_keywords(name: str) -> None:
    """A comma in an unquoted flow-style description splits it into a bogus key,
    which the API server refuses on update ("strict decoding error")."""
    assert unknown_keywords(schema(name), "") == []
    for column in crd(name)["spec"]["versions"][0]["additionalPrinterColumns"]:
        assert set(column) <= {"name", "type", "jsonPath", "description", "priority", "format"}, (
            column
        )


def test_the_pool_schema_takes_the_runtime_settings_and_names_a_bad_executor() -> None:
    good = pool_obj(runtime={"executor": "process", "torchThreads": 2, "forwardNice": 19})
    assert errors("inferencepool.yaml", good) == []
    bad = errors("inferencepool.yaml", pool_obj(runtime={"executor": "gpu", "torchThreads": 0,
                                                          "forwardNice": 20}))  # fmt: skip
    assert any(e.startswith("spec.runtime.executor") for e in bad), bad
    assert any(e.startswith("spec.runtime.torchThreads") for e in bad), bad
    assert any(e.startswith("spec.runtime.forwardNice") for e in bad), bad


def test_the_schema_takes_bytes_tensors_and_a_pad_spec_which_the_operator_reads() -> None:
    spec = sequence_spec_dict()
    assert errors("inferencemodel.yaml", {"spec": spec}) == []
    datatype = schema("inferencemodel.yaml")["properties"]["spec"]["properties"]["outputs"]
    assert "BYTES" in datatype["items"]["properties"]["datatype"]["enum"]  # outputs share it
    pad = ModelSpec.model_validate(spec).batching.pad
    assert pad is not None and pad.inputs == {"ids": 0, "mask": 0}
    assert (pad.axis, pad.buckets, pad.outputs) == (1, (32, 64, 128), ("states",))


def bad_pad(**pad: Any) -> dict[str, Any]:
    good = {"inputs": {"ids": 0, "mask": 0}, "buckets": [32, 64]}
    return {"spec": sequence_spec_dict(batching={"maxBatchSize": 8, "pad": {**good, **pad}})}


@pytest.mark.parametrize(
    ("obj", "field", "says"),
    [
        (bad_pad(axis=0), "spec.batching.pad.axis", "less than the minimum of 1"),
        (bad_pad(inputs={}), "spec.batching.pad.inputs", "should be non-empty"),
        (bad_pad(inputs={"ids": "zero"}), "spec.batching.pad.inputs.ids", "is not of type 'number'"),
        (bad_pad(buckets=[]), "spec.batching.pad.buckets", "should be non-empty"),
        (bad_pad(buckets=[0, 8]), "spec.batching.pad.buckets.0", "less than the minimum of 1"),
        (bad_pad(outputs=[""]), "spec.batching.pad.outputs.0", "should be non-empty"),
        ({"spec": sequence_spec_dict(batching={"pad": {"inputs": {"ids": 0}}})},
         "spec.batching.pad", "'buckets' is a required property"),
        ({"spec": model_spec_dict(inputs=[{"name": "s", "datatype": "STRING", "shape": [-1]}])},
         "spec.inputs.0.datatype", "is not one of"),
    ],
    ids=["axis-0", "no-inputs", "pad-value", "no-buckets", "bucket-0", "output-name",
         "buckets-required", "datatype"],
)  # fmt: skip
def test_the_schema_refuses_a_bad_pad_and_names_the_field(
    obj: dict[str, Any], field: str, says: str
) -> None:
    found = errors("inferencemodel.yaml", obj)
    assert any(e.startswith(f"{field}: ") and says in e for e in found), found


def test_pad_cel_rules_keep_buckets_increasing_and_name_padded_tensors() -> None:
    """What the structural schema cannot say; the API server evaluates these (the
    cluster tests apply bad resources), the runtime refuses the same at load."""
    spec = schema("inferencemodel.yaml")["properties"]["spec"]
    pad = spec["properties"]["batching"]["properties"]["pad"]
    assert pad["required"] == ["inputs", "buckets"]
    buckets = pad["properties"]["buckets"]
    assert rules(buckets) == [
        "self.isSorted() && self.all(b, self.indexOf(b) == self.lastIndexOf(b))"
    ]
    assert "strictly increasing" in buckets["x-kubernetes-validations"][0]["message"]
    # CEL over a map needs a bound on its size for the API server's cost estimate.
    assert pad["properties"]["inputs"]["maxProperties"] == 64
    assert pad["properties"]["inputs"]["additionalProperties"]["type"] == "number"
    by_path = {r.get("fieldPath"): r for r in spec["x-kubernetes-validations"]}
    inputs_rule = by_path[".batching.pad.inputs"]
    assert "self.inputs.exists(t, t.name == n && t.datatype != 'BYTES'" in inputs_rule["rule"]
    assert "t.shape[self.batching.pad.axis] == -1" in inputs_rule["rule"]
    assert "self.outputs.exists(t, t.name == n" in by_path[".batching.pad.outputs"]["rule"]
    for rule in (inputs_rule, by_path[".batching.pad.outputs"]):
        assert rule["rule"].startswith("!has(self.batching) || !has(self.batching.pad) ||")
        assert "variable (-1)" in rule["message"]
