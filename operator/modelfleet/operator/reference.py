"""docs/reference.md: every field of both resources as a Markdown table, from their CRDs.

One row a field, depth first: its type, the default the API server stores, what the
schema and the CEL rules check (a rule's message sits on the field it names), and
the description ``kubectl explain`` prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

LIMITS = (
    ("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
    ("minItems", "items ≥"), ("maxItems", "items ≤"), ("minProperties", "keys ≥"),
    ("maxProperties", "keys ≤"),
)  # fmt: skip


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type(schema['additionalProperties'])}"
    if schema.get("format"):
        kind += f" ({schema['format']})"
    return kind


def _limits(schema: dict[str, Any]) -> list[str]:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    for key, word in LIMITS:
        if key in schema:
            strict = {"minimum": "exclusiveMinimum", "maximum": "exclusiveMaximum"}.get(key)
            word = {"≥": ">", "≤": "<"}[word] if strict and schema.get(strict) else word
            parts.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if schema.get("x-kubernetes-list-map-keys"):
        parts.append("unique by " + ", ".join(schema["x-kubernetes-list-map-keys"]))
    elif schema.get("x-kubernetes-list-type") == "set":
        parts.append("unique items")
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict) and "properties" not in sub and _limits(sub):
            parts.append("each " + ", ".join(_limits(sub)))
    return parts


def _default(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def fields(schema: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, schema, required) for every property below ``schema``, depth first."""
    required = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, sub, name in required
        if sub.get("type") == "array" and (sub.get("items") or {}).get("properties"):
            yield from fields(sub["items"], f"{path}[]")
        elif sub.get("properties"):
            yield from fields(sub, path)


def _rules(root: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path of the field a rule names, its message) for every CEL rule."""
    for path, sub, _ in [("", root, False), *fields(root, "")]:
        for node, where in ((sub, path), (sub.get("items") or {}, f"{path}[]")):
            for rule in node.get("x-kubernetes-validations", []):
                named = where + rule.get("fieldPath", "")
                yield (named[:-2] if named.endswith("[]") else named), rule["message"]


def table(crd: dict[str, Any]) -> str:
    spec = crd["spec"]
    version = spec["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    kind, short = spec["names"]["kind"], spec["names"]["shortNames"][0]
    columns = ", ".join(c["name"] for c in version["additionalPrinterColumns"])
    rows = [
        f"## {kind} (`{spec['group']}/{version['name']}`)",
        "",
        _cell(root["description"]),
        "",
        f"`kubectl get {short}` (or `{spec['names']['plural']}`, or the category "
        f"`{spec['names']['categories'][0]}`) shows {columns}.",
        "",
        "| Field | Type | Default | Validation | Description |",
        "|---|---|---|---|---|",
    ]
    messages: dict[str, list[str]] = {}
    for path, message in _rules(root):
        messages.setdefault(path, []).append(message)
    for top in ("spec", "status"):
        for path, sub, required in fields(root["properties"][top], top):
            default = f"`{_default(sub['default'])}`" if "default" in sub else ""
            name = f"`{path}`" + (" (required)" if required else "")
            checks = "; ".join(_limits(sub) + messages.pop(path, []))
            cells = [name, f"`{_type(sub)}`", default, checks, sub.get("description", "")]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    rest = [m for ms in messages.values() for m in ms]
    if rest:
        rows += ["", "Rules on the whole object:", "", *(f"* {_cell(m)}" for m in rest)]
    scale = (version.get("subresources") or {}).get("scale")
    if scale:
        rows += ["", *scaling(short, spec["names"]["kind"], scale)]
    return "\n".join(rows)


def scaling(short: str, kind: str, scale: dict[str, Any]) -> list[str]:
    """The paragraph on the scale subresource: kubectl scale, the built-in autoscaler,
    and an HPA or KEDA in its place."""
    return [
        f"### Scaling {kind}s",
        "",
        f"The scale subresource maps `{scale['specReplicasPath']}` (wanted copies) and "
        f"`{scale['statusReplicasPath']}` (ready copies), with the selector in "
        f"`{scale.get('labelSelectorPath', '')}`: `kubectl scale {short} NAME --replicas=N` "
        "sets the stable version's copies. With `spec.autoscaling` set, the operator's own "
        "autoscaler decides the copies from the load it samples from the runtimes every pass "
        "(every 1-5 s; in-flight requests are averaged over 10 s), adds copies in proportion "
        "as soon as the load is above the target, removes them once the load has stayed "
        "below 70% of the target for `scaleDownDelaySeconds`, and ignores `spec.replicas`; "
        "it reports in `status.autoscaling` and with `ScaledUp`, `ScaledDown` and "
        "`ScaleBlocked` events. Expect a scale-up within one pass of the load plus the new "
        "copy's load and warm-up (7 s for the example MLP in the cluster tests), and a "
        "scale-down `scaleDownDelaySeconds` plus up to 10 s after the load drops. A copy "
        "being removed (by the autoscaler or by `kubectl scale`) first leaves the gateways' "
        "routes and is unloaded a pass later, after its requests finish, so none fails. "
        "With a canary, the canary scales on its own share: the same rule on its own load, "
        "from one copy (while it exists) up to `maxReplicas`, reported in "
        "`status.autoscaling.canary` (`spec.canary.replicas` is its starting point); a "
        "version being rolled out away keeps the copies it has until it drains. When the "
        "copies the models want no longer "
        "fit on the pool's pods (one copy of a version a pod, each pod's memory budget, "
        "placement's priority rules), the pool grows: its StatefulSet gets the pods "
        "placement needs at once, up to `spec.replicas.max` and no further (a `ScaleBlocked` "
        "Warning on the pool says what is missing); once the copies have fit on fewer pods "
        "for `spec.replicas.scaleDownDelaySeconds`, the pods past that count are drained "
        "(their copies are placed on the others, which take the traffic once ready; then "
        "the old copies leave the routes and the pods) and only then does the StatefulSet "
        "shrink. Expect a new pod to take copies one pass after the copies wanted rise, plus "
        "the pod's scheduling and start and the copy's load and warm-up (in the cluster "
        "tests, 3 ready copies 9-18 s after the load step, new runtime processes starting on "
        "a busy 2-CPU host). The pool reports in `status.scaling` (desired, current and ready pods, "
        "reason) and with `ScaledUp`, `ScaledDown` and `ScaleBlocked` events; the operator "
        "serves `modelfleet_desired_copies`, `modelfleet_ready_copies`, "
        "`modelfleet_pool_pods` and `modelfleet_scale_decisions_total` on its metrics port "
        "(`--metrics-port`; the chart's `operator.metricsPort`). With `minReplicas: 0` a "
        "model with no traffic (none "
        "answered, none in flight) for `scaleDownDelaySeconds` scales to zero: its copy "
        "leaves the routes, then is unloaded (its memory freed), the model reports "
        "Ready=False with reason `ScaledToZero` (a `ScaledToZero` event) and keeps its "
        "Service and its route, marked cold, so that the gateways hold its next requests "
        "(at most the route's waiting queue, each until its deadline, then 503 with "
        "Retry-After) instead of answering 404. The operator reads the requests held "
        "(`GET /admin/demand` on the gateways) each pass while a model is at zero (every "
        "5 s) and places, loads and warms one copy as soon as one is held (passes every "
        "1 s meanwhile): the first request's cold start is that pass plus the copy's load "
        "and warm-up. "
        "To let an HorizontalPodAutoscaler or KEDA decide instead, "
        "leave `spec.autoscaling` out and point the HPA's `scaleTargetRef` (or a KEDA "
        f"ScaledObject's) at `apiVersion: modelfleet.io/v1alpha1`, `kind: {kind}`, "
        "`name: NAME`, with an External or Object metric (for example the gateway's or the "
        "runtime's Prometheus metrics through an adapter; the selector names all the pool's "
        "runtime pods, so a Pods or Resource metric would average over every model of the "
        "pool); the HPA writes "
        f"`{scale['specReplicasPath']}` through the scale subresource and the operator "
        "places that many copies, each on a distinct pool pod.",
    ]


def render(crds: list[dict[str, Any]], command: str) -> str:
    head = [
        "# Resource reference",
        "",
        "Every field of the resources ModelFleet's operator serves: its type, the default",
        "the API server stores, what the schema and its CEL rules check, and the",
        "description that `kubectl explain` prints. Generated with the CRDs from the models",
        "in `operator/modelfleet/operator/` (`spec.py`, `statustypes.py`, `crd.py`) by",
        f"`{command}`; do not edit it by hand (a test fails when it differs).",
    ]
    return "\n\n".join(["\n".join(head), *(table(c) for c in crds)]) + "\n"
