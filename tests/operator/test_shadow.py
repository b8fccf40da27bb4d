"""spec.shadow in the operator: the shadow version placed with weight 0, the routes'
shadow once it is ready, never a client's answer, and status.shadow from the gateways'
comparison summaries."""

from __future__ import annotations

from typing import Any

from modelfleet.gateway.routes import parse_routes
from modelfleet.operator.desired import plan
from modelfleet.operator.reconcile import routes_file
from modelfleet.operator.status import model_status, shadow_status
from tests.operator.builders import MLP_SOURCE, model, model_obj, pod, pool
from tests.operator.test_canarysteps import FakeKube

V3 = {**MLP_SOURCE, "path": "mlp-v3.safetensors"}
SHADOW = {"version": "3", "source": V3, "percent": 25}


def test_the_shadow_is_placed_with_weight_0_and_mirrored_to_once_ready() -> None:
    spec = model(replicas=1, shadow=SHADOW)
    assert [(v.version, v.role, v.weight) for v in spec.versions()] == [
        ("1", "stable", 100), ("3", "shadow", 0)]  # fmt: skip
    loading = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
               pod("gpu-1", "127.1.0.3", {("mlp", "3"): "loading"})]  # fmt: skip
    result = plan(pool(), {"mlp": spec}, loading)
    assert {e.key for d in result.documents.values() for e in d} == {("mlp", "1"), ("mlp", "3")}
    assert result.routes["mlp"].shadow is None  # not ready yet: nothing mirrored
    ready = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
             pod("gpu-1", "127.1.0.3", {("mlp", "3"): "ready"})]  # fmt: skip
    route = plan(pool(), {"mlp": spec}, ready).routes["mlp"]
    assert route.shadow is not None and (route.shadow.version, route.shadow.percent) == ("3", 25)
    assert {v.version: v.weight for v in route.versions} == {"1": 100, "3": 0}
    parsed = parse_routes({"models": {"mlp": route}}).models["mlp"]  # the gateway takes it
    assert parsed.shadow == route.shadow
    assert "shadow" in routes_file({"mlp": route})


def test_a_shadow_never_answers_a_client_even_when_nothing_else_is_ready() -> None:
    spec = model(replicas=1, shadow=SHADOW)
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "loading"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "3"): "ready"})]  # fmt: skip
    route = plan(pool(), {"mlp": spec}, pods).routes["mlp"]
    assert {v.version: v.weight for v in route.versions} == {"1": 0, "3": 0}
    status = model_status(plan(pool(), {"mlp": spec}, pods).reports["mlp"], "u", {}, 1, "now")
    assert [v["role"] for v in status["versions"]] == ["stable", "shadow"]


def test_a_model_without_a_shadow_routes_as_before() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})]
    route = plan(pool(), {"mlp": model(replicas=1)}, pods).routes["mlp"]
    assert route.shadow is None and "shadow" not in routes_file({"mlp": route})


def test_status_sums_the_gateways_comparisons() -> None:
    summaries: list[dict[str, Any]] = [
        {"version": "3", "compared": 300, "failed": 1, "skipped": 2, "agreement": 0.5,
         "worst_abs_diff": 0.2, "worst_rel_diff": 0.1},
        {"version": "3", "compared": 100, "failed": 0, "skipped": 0, "agreement": 0.9,
         "worst_abs_diff": 0.7, "worst_rel_diff": None},
        {"version": "2", "compared": 999},  # an earlier shadow version: not this one's
    ]  # fmt: skip
    assert shadow_status("3", 25, summaries) == {
        "version": "3", "percent": 25, "compared": 400, "failed": 1, "skipped": 2,
        "agreement": 0.6, "worstAbsDiff": 0.7, "worstRelDiff": 0.1}  # fmt: skip
    assert shadow_status("3", 25, []) == {"version": "3", "percent": 25, "compared": 0,
                                          "failed": 0, "skipped": 0}  # fmt: skip


async def test_the_pass_writes_status_shadow_and_drops_it_with_the_shadow() -> None:
    from modelfleet.operator.reconcile import Reconciler
    from tests.operator.test_crds import declared, schema

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = model_obj(replicas=1, shadow=SHADOW)
    objs, specs = await reconciler._models("gpu", [obj])
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "3"): "ready"})]
    result = plan(pool(), specs, pods)
    summary = {"version": "3", "compared": 10, "failed": 0, "skipped": 0, "agreement": 1.0,
               "worst_abs_diff": 0.0, "worst_rel_diff": 0.0}  # fmt: skip
    await reconciler._model_status(objs[0], result, "now", None, None, [summary])
    status = kube.statuses["mlp"]
    assert status["shadow"]["compared"] == 10 and status["shadow"]["agreement"] == 1.0
    assert declared(schema("inferencemodel.yaml")["properties"]["status"], status, "status") == []
    del obj["spec"]["shadow"]
    objs, specs = await reconciler._models("gpu", [obj])
    await reconciler._model_status(objs[0], plan(pool(), specs, pods), "now")
    assert kube.statuses["mlp"]["shadow"] is None


def test_the_schema_keeps_the_shadow_apart_from_the_other_versions() -> None:
    from tests.operator.test_crds import schema

    spec = schema("inferencemodel.yaml")["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("self.shadow.version != self.version" in r for r in rules)
    percent = spec["properties"]["shadow"]["properties"]["percent"]
    assert percent["maximum"] == 100 and percent.get("exclusiveMinimum") in (True, None)


def test_a_gateway_without_comparisons_adds_nothing_to_status_shadow() -> None:
    """The pass hands status.shadow ``{}`` from a gateway that compared nothing yet (the
    shadow stage reads that as none so far, not as an unknown)."""
    summaries: list[dict[str, Any]] = [
        {},
        {"version": "3", "compared": 8, "failed": 0, "skipped": 0, "judged": 8, "agreed": 8,
         "agreement": 1.0, "worst_abs_diff": 0.0, "worst_rel_diff": 0.0},
    ]  # fmt: skip
    status = shadow_status("3", 25, summaries)
    assert (status["compared"], status["agreement"]) == (8, 1.0)
