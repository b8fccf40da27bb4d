"""Writes the CRDs, the chart's copy of them and docs/reference.md from the models.

    python -m modelfleet.operator.crdgen            # write them (make crds)
    python -m modelfleet.operator.crdgen --check    # list the files that differ; exit 1 if any

Run from the repository root (or pass --root). tests/operator/test_crdgen.py fails
when a committed file differs from this output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from modelfleet.operator import reference
from modelfleet.operator.crd import KINDS, Kind
from modelfleet.operator.spec import API_VERSION, GROUP, VERSION
from modelfleet.operator.structural import structural

COMMAND = "make crds"
HEADER = (
    "# Generated from operator/modelfleet/operator/spec.py, statustypes.py and crd.py\n"
    f"# by `{COMMAND}` (python -m modelfleet.operator.crdgen); do not edit.\n"
)


def openapi_schema(kind: Kind) -> dict[str, Any]:
    """The openAPIV3Schema of the kind's one version: the object around spec and status."""
    root: dict[str, Any] = {"type": "object", "description": kind.description}
    if kind.rules:
        root["x-kubernetes-validations"] = [r.as_json() for r in kind.rules]
    root["properties"] = {
        "apiVersion": {"type": "string",
                       "description": f"APIVersion of this representation ({API_VERSION})."},
        "kind": {"type": "string", "description": f"Kind of this representation ({kind.kind})."},
        "metadata": {"type": "object"},
        "spec": structural(kind.spec),
        "status": structural(kind.status),
    }  # fmt: skip
    return root


def crd(kind: Kind) -> dict[str, Any]:
    names = {"plural": kind.plural, "singular": kind.singular, "kind": kind.kind,
             "listKind": f"{kind.kind}List", "shortNames": list(kind.short_names),
             "categories": list(kind.categories)}  # fmt: skip
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}} | ({"scale": kind.scale.as_json()} if kind.scale else {}),
        "additionalPrinterColumns": [c.as_json() for c in kind.columns],
        "schema": {"openAPIV3Schema": openapi_schema(kind)},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name},
        "spec": {"group": GROUP, "scope": "Namespaced", "names": names, "versions": [version]},
    }


class _Dumper(yaml.SafeDumper):
    """Block style without anchors; long strings (descriptions, CEL rules) folded, unescaped."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = ">" if len(text) > 72 and "\n" not in text and text == text.strip() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def dump(document: dict[str, Any]) -> str:
    return HEADER + yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )


def files() -> dict[str, str]:
    """Every generated file: its path from the repository root, and its text."""
    crds = {kind: crd(kind) for kind in KINDS}
    out = {}
    for kind, document in crds.items():
        text = dump(document)
        out[f"crds/{kind.singular}.yaml"] = text
        out[f"charts/modelfleet/crds/{kind.singular}.yaml"] = text
    out["docs/reference.md"] = reference.render(list(crds.values()), COMMAND)
    return out


def stale(root: Path) -> list[str]:
    """The generated files under ``root`` that differ from the generator's output."""
    return [path for path, text in files().items()
            if not (root / path).is_file() or (root / path).read_text() != text]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale(args.root)
        for path in differ:
            print(f"{path} differs from the generator's output: run {COMMAND}", file=sys.stderr)
        return 1 if differ else 0
    for path, text in files().items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
