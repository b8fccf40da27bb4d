"""The CRDs, the chart's copy and docs/reference.md are the generator's output, and
the generator turns what a model declares into a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from modelfleet.operator import crdgen
from modelfleet.operator.crd import KINDS
from modelfleet.operator.markers import Rule, k8s
from modelfleet.operator.spec import ModelSpec
from modelfleet.operator.structural import SchemaError, structural

ROOT = Path(__file__).resolve().parents[2]
GENERATED = crdgen.files()


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_the_committed_file_is_the_generators_output(path: str) -> None:
    committed = ROOT / path
    assert committed.is_file() and committed.read_text() == GENERATED[path], (
        f"{path} differs from the generator's output: run `make crds` "
        "(python -m modelfleet.operator.crdgen) and commit the result"
    )


def test_the_chart_and_crds_folders_hold_exactly_the_generated_crds() -> None:
    for folder in ("crds", "charts/modelfleet/crds"):
        names = {f"{folder}/{p.name}" for p in (ROOT / folder).iterdir()}
        assert names == {p for p in GENERATED if p.startswith(f"{folder}/")}


def test_check_names_the_stale_file_and_the_command_and_writing_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "charts/modelfleet/crds/inferencemodel.yaml"
    stale.write_text(stale.read_text().replace("maximum: 100\n", "maximum: 101\n"))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    said = capsys.readouterr().err
    assert "charts/modelfleet/crds/inferencemodel.yaml differs" in said and "make crds" in said
    assert "crds/inferencepool.yaml" not in said
    crdgen.main(["--root", str(tmp_path)])
    assert crdgen.stale(tmp_path) == []


def test_the_reference_lists_every_field_of_both_crds() -> None:
    reference = GENERATED["docs/reference.md"]
    for kind in KINDS:
        assert f"## {kind.kind} (`modelfleet.io/v1alpha1`)" in reference
        schema = crdgen.openapi_schema(kind)
        for top in ("spec", "status"):
            for field in schema["properties"][top]["properties"]:
                assert f"`{top}.{field}`" in reference, f"{kind.kind} {top}.{field} missing"
    for path in ("spec.canary.weight", "spec.canary.source.path", "spec.inputs[].shape",
                 "status.versions[].role", "spec.replicas.min"):  # fmt: skip
        assert f"`{path}`" in reference
    assert "canary.version must differ from version" in reference
    assert "metadata.name must be a DNS label" in reference


def test_the_generated_yaml_parses_back_to_the_generators_dict() -> None:
    for kind in KINDS:
        assert yaml.safe_load(crdgen.dump(crdgen.crd(kind))) == crdgen.crd(kind)


class _Knob(BaseModel):
    """A knob."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    level: int = Field(default=3, ge=1)
    """How far it turns."""


class _Example(BaseModel):
    """An example spec."""

    model_config = ConfigDict(use_attribute_docstrings=True, json_schema_extra=k8s(rules=[
        Rule("self.low <= self.high", "low must not exceed high", field_path=".low")]))  # fmt: skip

    name: str = Field(min_length=1)
    """Its name."""
    low: float = Field(default=0.5, gt=0)
    """Lower bound,
    on two lines."""
    high: float | None = None
    knob: _Knob = _Knob()
    items: tuple[_Knob, ...] = Field(default=(), json_schema_extra=k8s(default=None))
    """Knobs."""


def test_a_field_declared_on_a_model_becomes_a_structural_schema_field() -> None:
    schema = structural(_Example)
    props = schema["properties"]
    assert schema["required"] == ["name"]
    assert schema["x-kubernetes-validations"] == [
        {
            "rule": "self.low <= self.high",
            "message": "low must not exceed high",
            "fieldPath": ".low",
        }
    ]
    assert props["low"] == {"type": "number", "description": "Lower bound, on two lines.",
                            "default": 0.5, "minimum": 0, "exclusiveMinimum": True}  # fmt: skip
    assert props["high"] == {"type": "number"}  # optional: no anyOf with null, no default
    # A model-valued default is {}: the API server fills in the nested defaults.
    assert props["knob"]["default"] == {} and props["knob"]["description"] == "A knob."
    assert props["knob"]["properties"]["level"] == {
        "type": "integer", "description": "How far it turns.", "default": 3, "minimum": 1}  # fmt: skip
    assert "default" not in props["items"] and props["items"]["items"]["type"] == "object"
    assert "title" not in str(schema) and "$ref" not in str(schema)


def test_a_type_a_structural_schema_cannot_say_is_refused_with_the_field_named() -> None:
    class Loose(BaseModel):
        either: int | str = 0

    with pytest.raises(SchemaError, match=r"Loose\.either"):
        structural(Loose)


def test_the_spec_model_refuses_what_the_crd_refuses_for_ranges_and_patterns() -> None:
    """One declaration drives both the API server's schema and the operator's parse."""
    good: dict[str, Any] = {
        "pool": "gpu", "version": "1", "source": {"path": "a.pt2"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }  # fmt: skip
    assert ModelSpec.model_validate(good).batching.max_batch_size == 16
    bad: list[dict[str, Any]] = [
        {"canary": {"version": "2", "weight": 120, "source": {"path": "b.pt2"}}},
        {"latencyObjectiveMs": 0}, {"version": "-bad"}, {"inputs": []},
    ]  # fmt: skip
    for overrides in bad:
        with pytest.raises(ValueError):
            ModelSpec.model_validate({**good, **overrides})
