"""The canary analysis step machine (pure) and its wiring into a pass: the weight the
plan routes, status.analysis, the Analysis condition, the events and the promotion
patch; the shadow stage before step 1."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from modelfleet.operator.canarysteps import (
    Counters,
    Outcome,
    Seen,
    State,
    advance,
    mirrored,
    promotion,
    routed_spec,
    seen_on,
)
from modelfleet.operator.desired import plan
from modelfleet.operator.observed import PodView, RuntimeState
from modelfleet.operator.spec import Analysis, Canary
from tests.operator.builders import MLP_SOURCE, model, model_obj, pool

V2 = {**MLP_SOURCE, "path": "mlp-v2.safetensors"}
STEPS = {"steps": [{"weight": 5, "minRequests": 100, "maxSeconds": 60},
                   {"weight": 25, "minRequests": 100, "maxSeconds": 60},
                   {"weight": 50, "minRequests": 100, "maxSeconds": 60}]}  # fmt: skip


def canary(weight: int = 0, version: str = "2", **analysis: Any) -> Canary:
    return Canary.model_validate({"version": version, "source": V2, "weight": weight,
                                  "analysis": {**STEPS, **analysis}})  # fmt: skip


def spec_of(c: Canary) -> Analysis:
    assert c.analysis is not None
    return c.analysis


class Traffic:
    """Cumulative counters of both versions as a steady stream grows them."""

    def __init__(self) -> None:
        self.canary = Counters(0, 0)
        self.stable = Counters(1000, 2)  # served before the analysis began

    def add(self, canary: int, canary_errors: int, stable: int, stable_errors: int = 0) -> Seen:
        self.canary = Counters(self.canary.requests + canary, self.canary.errors + canary_errors)
        self.stable = Counters(self.stable.requests + stable, self.stable.errors + stable_errors)
        return self.seen()

    def seen(self) -> Seen:
        return Seen(self.canary, self.stable, 10.0, 10.0)


def walk(c: Canary, feed: list[tuple[int, int, int, int]], start: float = 1000.0) -> list[Outcome]:
    """Passes one second apart, each after ``feed``'s requests arrived."""
    traffic, state, out = Traffic(), None, []
    for i, (n, e, s, se) in enumerate([(0, 0, 0, 0), *feed]):
        o = advance(spec_of(c), c, state, traffic.add(n, e, s, se), start + i)
        out.append(o)
        state = o.state
    return out


def test_good_data_walks_5_25_50_then_promotes() -> None:
    outcomes = walk(canary(), [(60, 0, 900, 1)] * 6)
    assert [(o.action, o.weight, o.state.phase) for o in outcomes] == [
        ("start", 5, "Running"),
        ("none", 5, "Running"),  # 60 of 100
        ("next", 25, "Running"),
        ("none", 25, "Running"),
        ("next", 50, "Running"),
        ("none", 50, "Running"),
        ("promote", 50, "Promoted"),
    ]
    assert outcomes[2].reason.startswith("AnalysisPassed: errorRate 0.0% vs 0.1%")
    assert "step 2 at weight 25%" in outcomes[2].reason
    assert outcomes[1].reason == "AnalysisWaiting: 60 of 100 canary requests"
    done = outcomes[-1].state
    assert (done.step, done.canary_window, done.summary) == (2, Counters(120, 0), "Promoted")
    again = advance(spec_of(canary()), canary(), done, Traffic().add(5000, 0, 5000), 2000.0)
    assert (again.action, again.state) == ("none", done)  # promoted stays promoted


def test_a_regression_fails_the_first_step_and_rolls_back() -> None:
    outcomes = walk(canary(), [(120, 30, 2000, 2)])
    last = outcomes[-1]
    assert (last.action, last.weight, last.state.phase) == ("rollback", 0, "RolledBack")
    assert last.reason.startswith("AnalysisFailed: errorRate 25.0% vs 0.1%")
    assert "(step 1 of 3 at weight 5%)" in last.reason
    # rolled back stays rolled back (no traffic) while the canary spec is the same
    later = advance(spec_of(canary()), canary(), last.state, Traffic().add(0, 0, 100), 5000.0)
    assert (later.action, later.weight, later.state.phase) == ("none", 0, "RolledBack")
    # a new canary version starts a new analysis
    fresh = advance(spec_of(canary(version="3")), canary(version="3"), last.state,
                    Traffic().seen(), 5001.0)  # fmt: skip
    assert (fresh.action, fresh.weight, fresh.state.step) == ("start", 5, 0)


def test_a_slow_canary_fails_on_p99() -> None:
    c = canary()
    first = advance(spec_of(c), c, None, Seen(Counters(0, 0), Counters(0, 0), None, 10.0), 0.0)
    slow = Seen(Counters(150, 0), Counters(3000, 0), 31.0, 10.0)
    out = advance(spec_of(c), c, first.state, slow, 5.0)
    assert out.action == "rollback" and "p99 31.0 ms vs 10.0 ms (3.10x" in out.reason


def test_too_few_requests_waits_then_holds_at_max_seconds_and_never_promotes() -> None:
    c = canary()
    traffic = Traffic()
    o = advance(spec_of(c), c, None, traffic.seen(), 0.0)
    actions = []
    for t in range(10, 200, 10):  # 3 canary requests every 10 s
        o = advance(spec_of(c), c, o.state, traffic.add(3, 0, 50), float(t))
        actions.append((o.action, o.state.phase))
        assert o.weight == 5
    assert actions[:5] == [("none", "Running")] * 5
    assert actions[5] == ("hold", "Holding")  # at 60 s, the step's maximum
    assert set(actions[6:]) == {("none", "Holding")}
    assert o.reason.startswith("AnalysisHolding: 57 of 100 canary requests after 190 s")
    assert o.state.summary == "1/3 5% holding"
    # evidence arriving later still counts: the step passes
    o = advance(spec_of(c), c, o.state, traffic.add(60, 0, 500), 300.0)
    assert (o.action, o.weight, o.state.phase) == ("next", 25, "Running")


def test_a_restart_resumes_the_same_step_from_the_status() -> None:
    c = canary()
    traffic = Traffic()
    o = advance(spec_of(c), c, None, traffic.seen(), 0.0)
    o = advance(spec_of(c), c, o.state, traffic.add(150, 0, 2000), 1.0)
    assert o.action == "next" and o.state.step == 1
    o = advance(spec_of(c), c, o.state, traffic.add(40, 0, 200), 2.0)
    written = o.state.as_status()
    assert written["step"] == 2 and written["canaryWindow"]["requests"] == 40
    resumed = State.of_status(written)  # a new operator process reads the status
    assert resumed is not None
    seen = traffic.add(30, 0, 200)
    a = advance(spec_of(c), c, resumed, seen, 3.0)
    b = advance(spec_of(c), c, o.state, seen, 3.0)  # as if it had never stopped
    assert a.weight == b.weight == 25 and a.state.canary_window == Counters(70, 0)
    assert a.reason == b.reason == "AnalysisWaiting: 70 of 100 canary requests"
    assert a == advance(spec_of(c), c, resumed, seen, 3.0)  # deterministic


def test_a_counter_drop_restarts_the_window_without_negative_counts() -> None:
    c = canary()
    o = advance(spec_of(c), c, None, Seen(Counters(500, 5), Counters(9000, 9)), 0.0)
    # a canary pod restarted: its counters start again from 0
    o = advance(spec_of(c), c, o.state, Seen(Counters(20, 0), Counters(9300, 9)), 1.0)
    assert o.state.canary_window == Counters(0, 0) and o.state.canary_start == Counters(20, 0)
    assert o.state.started == 0.0  # the step's clock keeps running
    o = advance(spec_of(c), c, o.state, Seen(Counters(80, 0), Counters(9600, 9)), 2.0)
    assert o.state.canary_window == Counters(60, 0)


def test_editing_the_weight_stops_the_automation() -> None:
    c = canary(weight=0)
    traffic = Traffic()
    o = advance(spec_of(c), c, None, traffic.seen(), 0.0)
    edited = canary(weight=30)
    o = advance(spec_of(edited), edited, o.state, traffic.add(10, 0, 100), 1.0)
    assert (o.action, o.weight, o.state.phase) == ("stop", 30, "Stopped")
    assert "spec.canary.weight changed from 0 to 30 by hand" in o.reason
    o = advance(spec_of(edited), edited, o.state, traffic.add(500, 0, 100), 2.0)
    assert (o.action, o.weight, o.state.phase) == ("none", 30, "Stopped")
    bigger = canary(weight=60)
    o = advance(spec_of(bigger), bigger, o.state, traffic.add(500, 0, 100), 3.0)
    assert (o.action, o.weight, o.state.phase) == ("none", 60, "Stopped")


def test_a_canary_not_ready_yet_gets_nothing_and_the_first_step_waits_for_it() -> None:
    c = canary()
    unready = Seen(Counters(0, 0), Counters(10, 0), canary_ready=False)
    o = advance(spec_of(c), c, None, unready, 0.0)
    assert (o.action, o.weight, o.state.phase) == ("none", 0, "Pending")
    o = advance(spec_of(c), c, o.state, Seen(Counters(0, 0), Counters(40, 0)), 30.0)
    assert (o.action, o.weight, o.state.started) == ("start", 5, 30.0)


def test_the_schema_refuses_steps_that_do_not_increase() -> None:
    import pytest
    from pydantic import ValidationError

    from tests.operator.test_crds import schema

    node = schema("inferencemodel.yaml")["properties"]["spec"]["properties"]["canary"]
    steps = node["properties"]["analysis"]["properties"]["steps"]
    rule = steps["x-kubernetes-validations"][0]
    assert "isSorted()" in rule["rule"] and "strictly increasing" in rule["message"]
    assert steps["minItems"] == 1
    with pytest.raises(ValidationError):
        Canary.model_validate({"version": "2", "source": V2, "analysis": {"steps": []}})
    with pytest.raises(ValidationError):
        Canary.model_validate({"version": "2", "source": V2,
                               "analysis": {"steps": [{"weight": 0}]}})  # fmt: skip
    analysis = spec_of(canary())
    assert (analysis.max_error_rate_increase, analysis.max_p99_ratio, analysis.alpha,
            analysis.p99_tolerance_ms) == (0.01, 1.5, 0.01, 5)  # fmt: skip


# -- the wiring: plan, status, events, promotion ------------------------------------------


def counting_pod(
    name: str, ip: str, counts: dict[tuple[str, str], tuple[int, int, float]]
) -> PodView:
    """A pod with ready versions that served (requests, errors, p99 ms)."""
    observed = [{"name": n, "version": v, "state": "ready", "memory_mb": 100.0, "served": r - e,
                 "errors": e, "p99_ms": p99} for (n, v), (r, e, p99) in counts.items()]  # fmt: skip
    state = RuntimeState.model_validate({
        "desired": {"models": [{"name": n, "version": v} for n, v in counts]},
        "actual": {"ready": True, "models": observed},
    })  # fmt: skip
    return PodView(name, ip, state)


class FakeKube:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []

    async def apply(self, obj: dict[str, Any]) -> None:
        return None

    async def patch(self, api_version: str, kind: str, namespace: str, name: str,
                    body: dict[str, Any]) -> None:  # fmt: skip
        self.patches.append(body)

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:  # fmt: skip
        self.statuses[name] = status

    async def event(self, obj: dict[str, Any], reason: str, message: str,
                    kind: str = "Normal") -> None:  # fmt: skip
        self.events.append((reason, message, kind))


def analysed_obj(**analysis: Any) -> dict[str, Any]:
    steps = {"steps": [{"weight": 20, "minRequests": 20, "maxSeconds": 60},
                       {"weight": 50, "minRequests": 20, "maxSeconds": 60}]}  # fmt: skip
    obj = model_obj(replicas=1, canary={"version": "2", "source": V2, "weight": 0,
                                        "analysis": {**steps, **analysis}})  # fmt: skip
    obj["metadata"]["resourceVersion"] = "41"
    return obj


async def one_pass(reconciler: Any, obj: dict[str, Any], pods: list[PodView]) -> dict[str, int]:
    """What converge does for the model: analysis, plan with its weight, status;
    returns the routed weights."""
    objs, specs = await reconciler._models("gpu", [obj])
    analyses = reconciler._analyses(objs, specs, pods)
    routed = {n: routed_spec(s, analyses[n].weight) if n in analyses else s
              for n, s in specs.items()}  # fmt: skip
    result = plan(pool(), routed, pods)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z", None,
                                   analyses.get("mlp"))  # fmt: skip
    return {v.version: v.weight for v in result.routes["mlp"].versions}


def pods_with(canary_n: int, canary_errors: int, stable_n: int) -> list[PodView]:
    return [counting_pod("gpu-0", "127.1.0.2", {("mlp", "1"): (stable_n, 0, 8.0)}),
            counting_pod("gpu-1", "127.1.0.3", {("mlp", "2"): (canary_n, canary_errors, 9.0)})]  # fmt: skip


async def test_the_pass_routes_the_steps_weights_reports_them_and_promotes_by_patching_the_spec() -> (
    None
):
    from modelfleet.operator.reconcile import Reconciler
    from tests.operator.test_crds import declared, schema

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj()
    assert await one_pass(reconciler, obj, pods_with(0, 0, 100)) == {"1": 80, "2": 20}
    status = kube.statuses["mlp"]["analysis"]
    assert (status["phase"], status["step"], status["weight"], status["summary"]) == (
        "Running", 1, 20, "1/2 20%")  # fmt: skip
    assert [v["weight"] for v in kube.statuses["mlp"]["versions"]] == [80, 20]
    node = schema("inferencemodel.yaml")["properties"]["status"]
    assert declared(node, kube.statuses["mlp"], "status") == []
    assert await one_pass(reconciler, obj, pods_with(25, 0, 200)) == {"1": 50, "2": 50}
    assert kube.events[-1][0] == "AnalysisStep" and "step 2 at weight 50%" in kube.events[-1][1]
    assert await one_pass(reconciler, obj, pods_with(50, 0, 300)) == {"1": 50, "2": 50}
    assert kube.statuses["mlp"]["analysis"]["phase"] == "Promoted"
    assert [e[0] for e in kube.events] == ["AnalysisStep", "AnalysisStep", "AnalysisPromoted"]
    assert kube.patches == [{
        "metadata": {"resourceVersion": "41"},
        "spec": {"version": "2", "source": {"path": "mlp-v2.safetensors",
                                            "architecture": "modelfleet.runtime.examples:mlp"},
                 "canary": None},
    }]  # fmt: skip
    # once the promotion landed, the status keeps the record and nothing more happens
    promoted = model_obj(replicas=1, version="2", source=V2)
    promoted["status"] = kube.statuses["mlp"]
    fresh = Reconciler(kube, None)  # type: ignore[arg-type]
    await one_pass(fresh, promoted, pods_with(60, 0, 300))
    assert "analysis" not in kube.statuses["mlp"]  # the merge patch leaves the record as it is
    assert fresh.status_of(promoted)["analysis"]["phase"] == "Promoted"
    assert len(kube.patches) == 1


async def test_a_failing_canary_is_routed_nothing_with_a_warning_and_stays_rolled_back() -> None:
    from modelfleet.operator.reconcile import Reconciler

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj()
    await one_pass(reconciler, obj, pods_with(0, 0, 100))
    assert await one_pass(reconciler, obj, pods_with(22, 22, 190)) == {"1": 100, "2": 0}
    reason, message, kind = kube.events[-1]
    assert (reason, kind) == ("AnalysisFailed", "Warning")
    assert message.startswith("AnalysisFailed: errorRate 100.0% vs 0.0% over 22 canary")
    analysis = kube.statuses["mlp"]["analysis"]
    assert (analysis["phase"], analysis["summary"], analysis["weight"]) == (
        "RolledBack", "RolledBack", 0)  # fmt: skip
    assert analysis["canaryWindow"] == {"requests": 22, "errors": 22, "errorRate": 1.0,
                                        "p99LatencyMs": 9.0}  # fmt: skip
    # a restarted operator reads it from the status and keeps the canary out
    obj["status"] = kube.statuses["mlp"]
    fresh = Reconciler(kube, None)  # type: ignore[arg-type]
    assert await one_pass(fresh, obj, pods_with(22, 22, 400)) == {"1": 100, "2": 0}
    assert [e[0] for e in kube.events].count("AnalysisFailed") == 1 and kube.patches == []


async def test_removing_the_analysis_stops_it_and_gives_back_the_specs_weight() -> None:
    from modelfleet.operator.reconcile import Reconciler

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj()
    await one_pass(reconciler, obj, pods_with(0, 0, 100))
    obj["spec"]["canary"] = {"version": "2", "source": V2, "weight": 10}
    assert await one_pass(reconciler, obj, pods_with(5, 0, 150)) == {"1": 90, "2": 10}
    assert kube.statuses["mlp"]["analysis"] is None  # the merge patch drops it
    assert kube.events[-1][0] == "AnalysisStopped"
    assert "spec.canary.analysis was removed" in kube.events[-1][1]


def test_the_pass_reads_counters_summed_over_pods_and_the_highest_p99() -> None:
    pods = [counting_pod("gpu-0", "127.1.0.2", {("mlp", "1"): (100, 1, 8.0), ("mlp", "2"): (10, 2, 30.0)}),
            counting_pod("gpu-1", "127.1.0.3", {("mlp", "1"): (50, 0, 12.0)})]  # fmt: skip
    seen = seen_on(pods, "mlp", "1", "2")
    assert seen == Seen(Counters(10, 2), Counters(150, 1), 30.0, 12.0, True)
    assert routed_spec(model(), 40) == model()  # no canary: unchanged
    with_canary = model(canary={"version": "2", "source": V2, "weight": 0})
    assert routed_spec(with_canary, 40).versions()[1].weight == 40


def test_the_promotion_patch_clears_source_fields_the_canary_does_not_set() -> None:
    obj = model_obj(source={"url": "https://x/m.safetensors", "sha256": "a" * 64,
                            "architecture": "modelfleet.runtime.examples:mlp"},
                    canary={"version": "2", "source": V2})  # fmt: skip
    obj["metadata"]["resourceVersion"] = "7"
    assert promotion(obj)["spec"]["source"] == {
        "url": None, "sha256": None, "path": "mlp-v2.safetensors",
        "architecture": "modelfleet.runtime.examples:mlp"}  # fmt: skip


async def test_a_promotion_that_meets_a_conflict_promotes_the_fresh_object_unless_edited() -> None:
    import copy

    from modelfleet.operator.kube import Conflict
    from modelfleet.operator.reconcile import Reconciler

    class Conflicting(FakeKube):
        def __init__(self, fresh: dict[str, Any]) -> None:
            super().__init__()
            self.fresh = fresh

        async def patch(self, api_version: str, kind: str, namespace: str, name: str,
                        body: dict[str, Any]) -> None:  # fmt: skip
            if body["metadata"]["resourceVersion"] != self.fresh["metadata"]["resourceVersion"]:
                raise Conflict(409, "the object has been modified")
            self.patches.append(body)

        async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
            return self.fresh

    obj = analysed_obj()
    fresh = copy.deepcopy(obj)
    fresh["metadata"]["resourceVersion"] = "42"  # kopf's annotations, say
    kube = Conflicting(fresh)
    await Reconciler(kube, None)._promote(obj)  # type: ignore[arg-type]
    assert [p["metadata"]["resourceVersion"] for p in kube.patches] == ["42"]
    fresh["spec"]["canary"]["weight"] = 30  # a person edited the canary meanwhile
    fresh["metadata"]["resourceVersion"] = "43"
    kube = Conflicting(fresh)
    await Reconciler(kube, None)._promote(obj)  # type: ignore[arg-type]
    assert kube.patches == []


# -- the shadow stage before step 1 ---------------------------------------------------------

STAGE = {"minRequests": 50, "minAgreement": 0.95, "percent": 40, "maxSeconds": 120}


def shadowed(**stage: Any) -> Canary:
    return canary(shadow={**STAGE, **stage})


def mirror(judged: int, disagreed: int) -> Seen:
    """Both versions' counters as a quiet stream leaves them, and the gateways' mirrored
    comparisons so far."""
    return Seen(Counters(0, 0), Counters(500, 0), 10.0, 10.0, mirror=Counters(judged, disagreed))


def test_the_shadow_stage_mirrors_the_canary_without_traffic_then_begins_step_1() -> None:
    c = shadowed()
    o = advance(spec_of(c), c, None, mirror(0, 0), 0.0)
    assert (o.action, o.weight, o.mirror, o.state.phase, o.state.stage) == (
        "shadow", 0, 40, "Running", "shadow")  # fmt: skip
    assert o.reason.startswith("AnalysisShadow: the canary gets no client traffic; 40% of")
    assert o.state.summary == "shadow"
    o = advance(spec_of(c), c, o.state, mirror(30, 0), 5.0)
    assert (o.action, o.weight, o.mirror) == ("none", 0, 40)
    assert o.reason == "AnalysisWaiting: 30 of 50 mirrored requests compared (shadow stage)"
    o = advance(spec_of(c), c, o.state, mirror(52, 1), 9.0)
    assert (o.action, o.weight, o.mirror, o.state.stage, o.state.step) == (
        "next", 5, None, "canary", 0)  # fmt: skip
    assert o.reason.startswith("AnalysisPassed: shadow agreement 98.1% (51 of 52 mirrored")
    assert o.reason.endswith("; step 1 of 3 began at weight 5%")
    assert (o.state.started, o.state.canary_start, o.state.summary) == (
        9.0, Counters(0, 0), "1/3 5%")  # fmt: skip
    assert o.state.as_status()["shadowWindow"] == {"compared": 52, "disagreed": 1,
                                                   "agreement": 0.9808}  # fmt: skip
    # the steps then run as without a shadow stage
    o = advance(spec_of(c), c, o.state, Seen(Counters(60, 0), Counters(900, 0), mirror=None), 10)
    assert (o.action, o.weight) == ("none", 5)
    assert o.reason == "AnalysisWaiting: 60 of 100 canary requests"


def test_low_agreement_after_min_requests_rolls_back_before_any_client_traffic() -> None:
    c = shadowed()
    o = advance(spec_of(c), c, None, mirror(0, 0), 0.0)
    o = advance(spec_of(c), c, o.state, mirror(40, 30), 5.0)  # bad, but not enough yet
    assert (o.action, o.weight, o.state.phase) == ("none", 0, "Running")
    o = advance(spec_of(c), c, o.state, mirror(60, 45), 8.0)
    assert (o.action, o.weight, o.mirror, o.state.phase) == ("rollback", 0, None, "RolledBack")
    assert o.reason == ("AnalysisFailed: shadow agreement 25.0% (15 of 60 mirrored answers "
                        "agree with the primary's arg-max), below minAgreement 95.0% "
                        "(shadow stage, before step 1)")  # fmt: skip
    later = advance(spec_of(c), c, o.state, mirror(200, 45), 500.0)
    assert (later.action, later.weight, later.mirror) == ("none", 0, None)


def test_the_shadow_stage_holds_without_enough_comparisons_and_never_begins_step_1() -> None:
    c = shadowed()
    o = advance(spec_of(c), c, None, mirror(0, 0), 0.0)
    actions = []
    for t in range(20, 300, 20):
        o = advance(spec_of(c), c, o.state, mirror(t // 20, 0), float(t))
        actions.append((o.action, o.state.phase, o.weight, o.mirror))
    assert actions[:5] == [("none", "Running", 0, 40)] * 5
    assert actions[5] == ("hold", "Holding", 0, 40)  # at 120 s, the stage's maximum
    assert set(actions[6:]) == {("none", "Holding", 0, 40)}
    assert o.reason.startswith("AnalysisHolding: 14 of 50 mirrored requests compared after 280 s")
    assert o.state.summary == "shadow holding"
    o = advance(spec_of(c), c, o.state, mirror(64, 0), 300.0)  # the evidence came
    assert (o.action, o.weight, o.state.phase, o.state.stage) == ("next", 5, "Running", "canary")


def test_the_shadow_window_starts_at_the_gateways_counters_and_survives_a_restart() -> None:
    c = shadowed()
    # the gateways still count an earlier shadow of version 2: not this stage's
    o = advance(spec_of(c), c, None, mirror(500, 400), 0.0)
    assert o.state.mirror_start == Counters(500, 400)
    o = advance(spec_of(c), c, o.state, mirror(530, 400), 5.0)
    written = o.state.as_status()
    assert (written["stage"], written["step"], written["shadowWindow"]["compared"]) == (
        "Shadow", 0, 30)  # fmt: skip
    resumed = State.of_status(written)  # a new operator process
    assert resumed is not None and resumed.stage == "shadow" and resumed.step == 0
    a = advance(spec_of(c), c, resumed, mirror(545, 400), 6.0)
    b = advance(spec_of(c), c, o.state, mirror(545, 400), 6.0)
    assert (
        a.reason
        == b.reason
        == "AnalysisWaiting: 45 of 50 mirrored requests compared (shadow stage)"
    )
    # a pass without a gateway's report (a new process, a gateway not answering) judges
    # the window it had; a gateway restart (its counters lower) restarts the window
    quiet = advance(spec_of(c), c, a.state, Seen(Counters(0, 0), Counters(9, 0)), 7.0)
    assert quiet.state.mirror_window == Counters(45, 0) and quiet.action == "none"
    restarted = advance(spec_of(c), c, quiet.state, mirror(3, 0), 8.0)
    assert restarted.state.mirror_window == Counters(0, 0)
    assert restarted.state.started == 0.0  # the stage's clock keeps running


def test_a_shadow_stage_removed_from_the_spec_begins_step_1() -> None:
    c = shadowed()
    o = advance(spec_of(c), c, None, mirror(0, 0), 0.0)
    plain = canary()
    o = advance(spec_of(plain), plain, o.state, mirror(10, 0), 3.0)
    assert (o.action, o.weight, o.state.stage) == ("next", 5, "canary")
    assert "the shadow stage was removed from the spec; step 1 of 3" in o.reason


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 20)),
                max_size=40))  # fmt: skip
def test_during_the_shadow_stage_no_client_traffic_and_step_1_only_on_enough_agreement(
    feed: list[tuple[int, int, int]],
) -> None:
    """Whatever the gateways report, pass after pass: the canary's weight stays 0 while
    it is mirrored to; step 1 begins only after minRequests judged at minAgreement;
    a rollback only below it; resuming from the status at any pass changes nothing."""
    c = shadowed()
    judged = disagreed = 0
    now = 0.0
    o = advance(spec_of(c), c, None, mirror(0, 0), now)
    for n, bad, dt in feed:
        judged, disagreed, now = judged + n, disagreed + min(bad, n), now + dt
        seen = mirror(judged, disagreed)
        before = o.state
        o = advance(spec_of(c), c, before, seen, now)
        resumed = State.of_status(before.as_status())
        assert resumed is not None
        again = advance(spec_of(c), c, resumed, seen, now)
        assert (again.action, again.weight, again.mirror, again.reason) == (
            o.action, o.weight, o.mirror, o.reason)  # fmt: skip
        if o.state.stage == "shadow" and o.state.phase in ("Running", "Holding"):
            assert (o.weight, o.mirror) == (0, 40)
        if o.action == "next":
            assert judged >= 50 and judged - disagreed >= 0.95 * judged - 1e-9
            break
        if o.action == "rollback":
            assert judged >= 50 and judged - disagreed < 0.95 * judged
            assert o.weight == 0
            break


def test_the_gateways_comparisons_are_summed_for_the_canary_version() -> None:
    summaries: list[dict[str, Any]] = [
        {"version": "2", "compared": 40, "failed": 2, "judged": 40, "agreed": 38},
        {"version": "2", "compared": 10, "failed": 0, "agreement": 0.5},  # an older gateway
        {"version": "3", "compared": 999, "judged": 999, "agreed": 0},  # not this canary
    ]
    assert mirrored(summaries, "2") == Counters(40 + 2 + 10, 2 + 2 + 5)
    # a gateway without comparisons of the version answers {}: none yet
    assert mirrored([*summaries, {}], "4") == Counters(0, 0)
    assert mirrored([], "2") is None  # no gateway answered: not known this pass


def test_the_shadow_stage_routes_the_canary_as_the_shadow_on_the_same_copies() -> None:
    from tests.operator.builders import pod

    spec = model(replicas=1, canary={"version": "2", "source": V2, "analysis": {
        **STEPS, "shadow": STAGE}})  # fmt: skip
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "2"): "ready"})]  # fmt: skip
    shadowing = plan(pool(), {"mlp": routed_spec(spec, 0, 40)}, pods)
    route = shadowing.routes["mlp"]
    assert route.shadow is not None and (route.shadow.version, route.shadow.percent) == ("2", 40)
    assert {v.version: v.weight for v in route.versions} == {"1": 100, "2": 0}
    assert [(v.version, v.role) for v in shadowing.reports["mlp"].versions] == [
        ("1", "stable"), ("2", "shadow")]  # fmt: skip
    stepping = plan(pool(), {"mlp": routed_spec(spec, 5)}, pods)
    assert stepping.routes["mlp"].shadow is None
    assert {v.version: v.weight for v in stepping.routes["mlp"].versions} == {"1": 95, "2": 5}
    # the same entry in the pods' documents: nothing is loaded again when step 1 begins
    assert shadowing.documents == stepping.documents
    # and with nothing else ready, a shadowing canary still answers no client
    down = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "loading"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "2"): "ready"})]  # fmt: skip
    weights = plan(pool(), {"mlp": routed_spec(spec, 0, 40)}, down).routes["mlp"].versions
    assert {v.version: v.weight for v in weights} == {"1": 0, "2": 0}


def test_the_schema_refuses_a_shadow_stage_next_to_spec_shadow() -> None:
    from tests.operator.test_crds import schema

    spec = schema("inferencemodel.yaml")["properties"]["spec"]
    (rule,) = [r for r in spec["x-kubernetes-validations"]
               if r.get("fieldPath") == ".canary.analysis.shadow"]  # fmt: skip
    assert "!has(self.canary.analysis.shadow)" in rule["rule"]
    assert rule["message"].startswith(
        "canary.analysis.shadow must not be combined with spec.shadow"
    )
    stage = spec["properties"]["canary"]["properties"]["analysis"]["properties"]["shadow"]
    props = stage["properties"]
    assert (props["minAgreement"]["minimum"], props["minAgreement"]["maximum"]) == (0, 1)
    assert "arg-max" in props["minAgreement"]["description"]
    assert props["minRequests"]["default"] == 100 and props["percent"]["maximum"] == 100


# -- the Analysis condition --------------------------------------------------------------


def analysis_condition_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Analysis")


async def test_the_analysis_condition_shows_waiting_holding_and_failed_with_the_figures() -> None:
    from modelfleet.operator.reconcile import Reconciler
    from tests.operator.test_crds import declared, schema

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj()
    await one_pass(reconciler, obj, pods_with(0, 0, 100))
    assert analysis_condition_of(kube.statuses["mlp"]) | {"lastTransitionTime": ""} == {
        "type": "Analysis", "status": "Unknown", "reason": "AnalysisStep",
        "message": "step 1 of 2 began at weight 20%", "lastTransitionTime": "",
        "observedGeneration": 1}  # fmt: skip
    await one_pass(reconciler, obj, pods_with(7, 0, 130))
    waiting = analysis_condition_of(kube.statuses["mlp"])
    assert (waiting["status"], waiting["reason"], waiting["message"]) == (
        "Unknown", "AnalysisWaiting", "7 of 20 canary requests")  # fmt: skip
    # the step's maxSeconds (60) passes with 7 requests: holding, said in the condition
    state = State.of_status(kube.statuses["mlp"]["analysis"])
    assert state is not None
    reconciler.statuses[obj["metadata"]["uid"]]["analysis"] = {
        **state.as_status(), "stepStartTime": "2020-01-01T00:00:00.000+00:00"}  # fmt: skip
    await one_pass(reconciler, obj, pods_with(7, 0, 160))
    holding = analysis_condition_of(kube.statuses["mlp"])
    assert (holding["status"], holding["reason"]) == ("Unknown", "AnalysisHolding")
    assert holding["message"].startswith("7 of 20 canary requests after ")
    assert "not promoting without evidence" in holding["message"]
    assert kube.events[-1][0::2] == ("AnalysisHolding", "Warning")
    node = schema("inferencemodel.yaml")["properties"]["status"]
    assert declared(node, kube.statuses["mlp"], "status") == []
    # evidence arrives, but it is bad: failed, False, with the figures
    await one_pass(reconciler, obj, pods_with(40, 20, 400))
    failed = analysis_condition_of(kube.statuses["mlp"])
    assert (failed["status"], failed["reason"]) == ("False", "AnalysisFailed")
    assert failed["message"].startswith("errorRate 50.0% vs 0.0% over 40 canary and 300 stable")


async def test_the_analysis_condition_is_true_once_promoted_and_gone_with_the_analysis() -> None:
    from modelfleet.operator.reconcile import Reconciler

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj()
    await one_pass(reconciler, obj, pods_with(0, 0, 100))
    await one_pass(reconciler, obj, pods_with(25, 0, 200))
    await one_pass(reconciler, obj, pods_with(50, 0, 300))
    promoted = analysis_condition_of(kube.statuses["mlp"])
    assert (promoted["status"], promoted["reason"]) == ("True", "AnalysisPassed")
    obj["spec"]["canary"] = {"version": "2", "source": V2, "weight": 10}  # analysis removed
    fresh = Reconciler(kube, None)  # type: ignore[arg-type]
    analysed = analysed_obj()
    await one_pass(fresh, analysed, pods_with(0, 0, 100))
    analysed["spec"]["canary"] = {"version": "2", "source": V2, "weight": 10}
    await one_pass(fresh, analysed, pods_with(5, 0, 150))
    assert "Analysis" not in {c["type"] for c in kube.statuses["mlp"]["conditions"]}


async def test_the_pass_mirrors_the_canary_and_judges_the_gateways_comparisons() -> None:
    """The wiring: the shadow stage's routes, status.shadow for the canary, the
    comparisons read one pass and judged the next, the rollback's Warning event."""
    from modelfleet.operator.reconcile import Reconciler
    from tests.operator.test_crds import declared, schema

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = analysed_obj(shadow={"minRequests": 20, "minAgreement": 0.9, "percent": 50})
    objs, specs = await reconciler._models("gpu", [obj])
    pods = pods_with(0, 0, 100)

    async def mirrored_pass(summaries: list[dict[str, Any]]) -> Any:
        analyses = reconciler._analyses(objs, specs, pods)
        o = analyses["mlp"]
        result = plan(pool(), {"mlp": routed_spec(specs["mlp"], o.weight, o.mirror)}, pods)
        await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z", None, o,
                                       summaries)  # fmt: skip
        return result.routes["mlp"]

    route = await mirrored_pass([{}])  # the gateway has compared nothing yet
    assert route.shadow is not None and (route.shadow.version, route.shadow.percent) == ("2", 50)
    assert {v.version: v.weight for v in route.versions} == {"1": 100, "2": 0}
    status = kube.statuses["mlp"]
    assert (status["analysis"]["stage"], status["analysis"]["summary"]) == ("Shadow", "shadow")
    assert status["shadow"] == {"version": "2", "percent": 50, "compared": 0, "failed": 0,
                                "skipped": 0}  # fmt: skip
    assert kube.events[-1][0] == "AnalysisShadow"
    bad = {"version": "2", "compared": 24, "failed": 0, "skipped": 0, "judged": 24, "agreed": 6,
           "agreement": 0.25, "worst_abs_diff": 0.3, "worst_rel_diff": 2.0}  # fmt: skip
    await mirrored_pass([bad])  # read this pass ...
    assert kube.statuses["mlp"]["shadow"]["agreement"] == 0.25
    assert kube.statuses["mlp"]["analysis"]["phase"] == "Running"
    route = await mirrored_pass([bad])  # ... judged the next
    status = kube.statuses["mlp"]
    assert status["analysis"]["phase"] == "RolledBack" and status["analysis"]["stage"] == "Shadow"
    assert route.shadow is None  # the judging pass plans without the mirror
    assert {v.version: v.weight for v in route.versions} == {"1": 100, "2": 0}
    assert [v["role"] for v in status["versions"]] == ["stable", "canary"]
    reason, message, kind = kube.events[-1]
    assert (reason, kind) == ("AnalysisFailed", "Warning")
    assert message.startswith("AnalysisFailed: shadow agreement 25.0% (6 of 24 mirrored")
    condition = analysis_condition_of(status)
    assert (condition["status"], condition["reason"]) == ("False", "AnalysisFailed")
    assert declared(schema("inferencemodel.yaml")["properties"]["status"], status, "status") == []
    assert status["shadow"]["agreement"] == 0.25  # the comparison stays in the status
