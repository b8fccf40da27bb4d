"""The autoscaler's decision (a pure function, property-tested), the plan it feeds,
and what the operator reports of it (status, events)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from modelfleet.operator.autoscale import (
    DOWN_BELOW,
    Decision,
    Inputs,
    Load,
    LoadWindow,
    Policy,
    decide,
    sample,
)
from modelfleet.operator.desired import plan
from modelfleet.operator.observed import PodView, RuntimeState
from modelfleet.operator.spec import Autoscaling
from tests.operator.builders import MLP_SOURCE, model, model_obj, pod, pool

policies = st.builds(
    lambda lo, extra, metric, target, delay: Policy(lo, max(1, lo + extra), metric, target, delay),
    st.integers(0, 8), st.integers(0, 12), st.sampled_from(["inFlight", "queueMs"]),
    st.floats(0.5, 200), st.sampled_from([0.0, 5.0, 60.0]),
)  # fmt: skip
loads = st.builds(Load, st.floats(0, 5000), st.floats(0, 5000), st.floats(0, 5000))


@st.composite
def situations(draw: st.DrawFn) -> tuple[Policy, Inputs]:
    policy = draw(policies)
    now = draw(st.floats(1e9, 2e9))
    past = st.one_of(st.none(), st.floats(0, 600).map(lambda ago: now - ago))
    inputs = Inputs(
        load=draw(st.one_of(st.none(), loads)),
        copies=draw(st.integers(0, 30)),
        ready=draw(st.integers(0, 30)),
        now=now,
        last_change=draw(past),
        low_since=draw(past),
        waiting=draw(st.sampled_from([0, 0, 1, 5])),
        held_at=draw(past),
    )
    return policy, inputs


@given(situations())
def test_never_below_min_nor_above_max(case: tuple[Policy, Inputs]) -> None:
    policy, inputs = case
    d = decide(policy, inputs)
    assert policy.min_replicas <= d.copies <= policy.max_replicas
    assert d.copies >= 1 or policy.min_replicas == 0


@given(situations())
def test_never_zero_copies_while_there_is_traffic_or_waiting_demand(
    case: tuple[Policy, Inputs],
) -> None:
    policy, inputs = case
    d = decide(policy, inputs)
    if inputs.waiting > 0 or (inputs.load is not None and inputs.load.has_traffic):
        assert d.copies >= 1
    if inputs.copies == 0 and inputs.demand_at_zero and policy.min_replicas == 0:
        assert (d.copies, d.reason) == (1, "ScaledUp")


@given(situations())
def test_to_zero_only_from_one_copy_after_the_delay_without_traffic(
    case: tuple[Policy, Inputs],
) -> None:
    policy, inputs = case
    d = decide(policy, inputs)
    if d.copies == 0 and inputs.copies > 0:
        assert d.reason == "ScaledToZero" and inputs.copies == 1
        assert inputs.load is not None and not inputs.load.has_traffic
        low_for = inputs.now - (inputs.low_since if inputs.low_since is not None else inputs.now)
        assert low_for + 1e-6 >= policy.scale_down_delay_s


@given(situations())
def test_deterministic(case: tuple[Policy, Inputs]) -> None:
    policy, inputs = case
    assert decide(policy, inputs) == decide(policy, inputs)


@given(situations())
def test_never_removes_the_last_copy_of_a_version_with_traffic(
    case: tuple[Policy, Inputs],
) -> None:
    policy, inputs = case
    d = decide(policy, inputs)
    if inputs.load is not None and inputs.load.has_traffic and inputs.copies >= 1:
        assert d.copies >= 1


@given(situations())
def test_scale_down_only_after_the_load_stayed_low_for_the_delay(
    case: tuple[Policy, Inputs],
) -> None:
    policy, inputs = case
    d = decide(policy, inputs)
    if d.reason == "ScaledDown" or (d.reason == "ScaledToZero" and inputs.copies > 0):
        assert inputs.low_since is not None or policy.scale_down_delay_s == 0
        low_for = inputs.now - (inputs.low_since if inputs.low_since is not None else inputs.now)
        assert low_for + 1e-6 >= policy.scale_down_delay_s
        if inputs.last_change is not None:
            assert inputs.now - inputs.last_change + 1e-6 >= policy.scale_down_delay_s
    if d.copies < inputs.copies and d.reason != "Clamped":
        assert d.reason == ("ScaledToZero" if d.copies == 0 else "ScaledDown")


def _load(policy: Policy, demand: float, ready: int) -> Load:
    """A load worth ``demand`` copies at the target (queue time as ``ready`` copies see it)."""
    if policy.metric == "inFlight":
        return Load(demand * policy.target, 0.0, 1.0)
    return Load(0.0, demand * policy.target / max(ready, 1), 1.0)


def run(policy: Policy, demand: float, copies: int, steps: int = 40) -> list[Decision]:
    """Passes 3 s apart under a steady load worth ``demand`` copies; every copy gets
    ready at once, and the operator remembers the times as its status does."""
    now, last_change, low_since = 1e9, None, None
    out = []
    for _ in range(steps):
        load = _load(policy, demand, copies)
        d = decide(policy, Inputs(load, copies, copies, now, last_change, low_since))
        if d.copies != copies:
            last_change = now
        copies, low_since = d.copies, d.low_since
        out.append(d)
        now += 3.0
    return out


@settings(max_examples=300)
@given(policies, st.floats(0, 40), st.integers(1, 20))
def test_a_steady_load_changes_the_copies_at_most_once_then_never_again(
    policy: Policy, demand: float, start: int
) -> None:
    """No flapping: the copies settle (one change to come within bounds, at most one
    more to follow the load) and then stay."""
    decisions = run(policy, demand, start)
    counts = [start, *(d.copies for d in decisions)]
    changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    assert changes <= 2
    settled = counts[-1]
    assert all(c == settled for c in counts[-10:])
    assert policy.min_replicas <= settled <= policy.max_replicas
    # settled inside the band: not above the target, not below 70% of it (unless min/max hold it)
    if policy.min_replicas < settled < policy.max_replicas:
        assert demand <= settled + 1e-6 and demand / settled >= DOWN_BELOW - 1e-6 - 1 / settled


@given(policies, st.integers(1, 10), st.floats(1.01, 4))
def test_a_load_that_grows_adds_its_copies_in_one_step(
    policy: Policy, copies: int, factor: float
) -> None:
    """From a load at the target on ``copies`` copies, a load ``factor`` times larger
    gets ceil(copies x factor) copies (at most max) in the next decision."""
    if not policy.min_replicas <= copies <= policy.max_replicas:
        return
    load = _load(policy, copies * factor, copies)
    d = decide(policy, Inputs(load, copies, copies, 1e9))
    assert d.copies == min(policy.max_replicas, math.ceil(copies * factor - 1e-9))
    if d.copies > copies:
        assert d.reason == "ScaledUp"


def test_a_doubled_load_doubles_the_copies_at_once() -> None:
    policy = Policy(1, 10, "inFlight", 2.0, 60.0)
    d = decide(policy, Inputs(Load(16.0, 0.0, 50.0), 4, 4, 1e9))
    assert (d.copies, d.reason) == (8, "ScaledUp")
    assert d.message.startswith("copies 4 -> 8: 16.00 requests in flight")


def test_the_hysteresis_band_and_the_stabilisation_window() -> None:
    policy = Policy(1, 10, "inFlight", 1.0, 30.0)
    # 2 copies, 1.5 in flight: 75% of the target, inside the band: steady
    assert decide(policy, Inputs(Load(1.5, 0, 5), 2, 2, 1000.0)).reason == "Steady"
    # 1.2 in flight: one copy would hold 120% of the target, so two stay
    assert decide(policy, Inputs(Load(1.2, 0, 5), 2, 2, 1000.0)).reason == "Steady"
    # 0.6 in flight: one copy stays below 70%; removed, but only after 30 s low
    first = decide(policy, Inputs(Load(0.6, 0, 5), 2, 2, 1000.0))
    assert (first.copies, first.reason, first.low_since) == (2, "WaitingForScaleDown", 1000.0)
    later = decide(policy, Inputs(Load(0.2, 0, 5), 2, 2, 1029.0, None, first.low_since))
    assert later.reason == "WaitingForScaleDown"
    done = decide(policy, Inputs(Load(0.2, 0, 5), 2, 2, 1030.0, None, first.low_since))
    assert (done.copies, done.reason, done.low_since) == (1, "ScaledDown", None)
    # the load coming back in the band resets the window
    back = decide(policy, Inputs(Load(1.5, 0, 5), 2, 2, 1020.0, None, first.low_since))
    assert (back.reason, back.low_since) == ("Steady", None)
    # a change 10 s ago holds a scale-down even when the load has been low longer
    held = decide(policy, Inputs(Load(0.0, 0, 0), 2, 2, 1100.0, 1090.0, 1000.0))
    assert held.reason == "WaitingForScaleDown"


def test_queue_time_scales_with_the_ready_copies() -> None:
    policy = Policy(1, 8, "queueMs", 50.0, 60.0)
    d = decide(policy, Inputs(Load(0, 150.0, 100), 2, 2, 1e9))
    assert (d.copies, d.reason) == (6, "ScaledUp")
    assert "queue time 150.0 ms" in d.message


def test_no_sample_keeps_the_copies_and_out_of_bounds_is_clamped() -> None:
    policy = Policy(2, 4, "inFlight", 1.0, 60.0)
    assert decide(policy, Inputs(None, 3, 3, 1e9)).copies == 3
    assert decide(policy, Inputs(None, 3, 3, 1e9)).reason == "NoLoadSample"
    assert decide(policy, Inputs(None, 1, 1, 1e9)).copies == 2
    assert decide(policy, Inputs(Load(0, 0, 0), 9, 9, 1e9)).reason == "Clamped"


def test_the_spec_needs_exactly_one_target_and_allows_zero_copies() -> None:
    a = Autoscaling.model_validate({"maxReplicas": 3, "targetInFlight": 2})
    assert (a.min_replicas, a.scale_down_delay_seconds) == (1, 60)
    assert Policy.of(a) == Policy(1, 3, "inFlight", 2.0, 60.0)
    q = Autoscaling.model_validate({"maxReplicas": 3, "targetQueueMs": 20})
    assert Policy.of(q).metric == "queueMs"
    zero = Autoscaling.model_validate({"minReplicas": 0, "maxReplicas": 3, "targetInFlight": 2})
    assert Policy.of(zero).min_replicas == 0
    with pytest.raises(ValidationError):
        Autoscaling.model_validate({"minReplicas": -1, "maxReplicas": 3, "targetInFlight": 2})
    with pytest.raises(ValidationError):
        Autoscaling.model_validate({"minReplicas": 0, "maxReplicas": 0, "targetInFlight": 2})


def test_the_crd_validates_the_autoscaling_block() -> None:
    from tests.operator.test_crds import rules, schema

    spec = schema("inferencemodel.yaml")["properties"]["spec"]["properties"]
    node = spec["autoscaling"]
    assert rules(node) == [
        "self.minReplicas <= self.maxReplicas",
        "has(self.targetQueueMs) != has(self.targetInFlight)",
    ]
    assert node["properties"]["minReplicas"]["minimum"] == 0
    assert "ScaledToZero" in node["properties"]["minReplicas"]["description"]
    assert node["required"] == ["maxReplicas"]


def test_the_load_window_averages_in_flight_and_gives_the_rate() -> None:
    w = LoadWindow()
    assert w.add(0.0, 4, 10.0, {"gpu-0": 100}) is None
    assert w.add(0.5, 4, 10.0, {"gpu-0": 110}) is None  # less than a second
    load = w.add(2.0, 1, 40.0, {"gpu-0": 140})
    assert load == Load(in_flight=3.0, queue_ms=20.0, request_rate=20.0)
    load = w.add(13.0, 0, 0.0, {"gpu-0": 140})  # the first samples leave the window
    assert load is not None and load.in_flight == pytest.approx(0.5)
    assert load.request_rate == 0.0


def test_a_copy_that_leaves_or_restarts_keeps_the_window_and_the_rate() -> None:
    """A scale-down removes a copy and its counter from the sum: the window goes on
    (an empty one would read NoLoadSample right after every scale-down), and the rate
    counts only what each pod answered since the last sample."""
    w = LoadWindow()
    w.add(0.0, 2, 5.0, {"gpu-0": 100, "gpu-1": 50})
    load = w.add(1.0, 2, 5.0, {"gpu-0": 110, "gpu-1": 60})
    assert load is not None and load.request_rate == 20.0
    load = w.add(2.0, 1, 5.0, {"gpu-0": 120})  # gpu-1's copy left
    assert load is not None and load.request_rate == 15.0  # (10 + 10 + 10) / 2 s
    load = w.add(3.0, 1, 5.0, {"gpu-0": 4, "gpu-2": 6})  # gpu-0 restarted; gpu-2 joined
    assert load is not None and load.request_rate == pytest.approx(40.0 / 3, abs=1e-3)  # 40 / 3 s


def busy_pod(
    name: str, ip: str, versions: dict[tuple[str, str], tuple[str, int, float]]
) -> PodView:
    """A pod whose versions report (state, in flight, queue wait ms)."""
    state = RuntimeState.model_validate({
        "desired": {"models": [{"name": n, "version": v} for n, v in versions]},
        "actual": {"ready": True, "models": [
            {"name": n, "version": v, "state": s, "memory_mb": 100, "inflight": f,
             "queue_wait_ms": q, "served": 10}
            for (n, v), (s, f, q) in versions.items()]},
    })  # fmt: skip
    return PodView(name, ip, state)


def test_sample_sums_in_flight_and_takes_the_highest_queue_time() -> None:
    pods = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 3, 12.0)}),
            busy_pod("gpu-1", "127.1.0.3", {("mlp", "1"): ("ready", 2, 30.0)})]  # fmt: skip
    assert sample(pods, ("mlp", "1")) == (5, 30.0, {"gpu-0": 10, "gpu-1": 10})


# -- the plan -----------------------------------------------------------------------


def three_pods(states: dict[str, str]) -> list[PodView]:
    ips = {"gpu-0": "127.1.0.2", "gpu-1": "127.1.0.3", "gpu-2": "127.1.0.4"}
    return [pod(n, ip, {("mlp", "1"): states[n]} if n in states else {}) for n, ip in ips.items()]


def test_the_plan_places_the_decided_copies_instead_of_spec_replicas() -> None:
    spec = model(replicas=1, autoscaling={"maxReplicas": 3, "targetInFlight": 1})
    result = plan(pool(), {"mlp": spec}, three_pods({"gpu-0": "ready"}), copies={"mlp": 3})
    stable = result.reports["mlp"].stable
    assert stable.replicas == 3 and stable.pods == ["gpu-0", "gpu-1", "gpu-2"]
    assert sorted(p for (_k, p) in result.placed) == ["gpu-1", "gpu-2"]


def test_a_scale_down_takes_the_copy_out_of_the_routes_first_then_off_the_pod() -> None:
    """The surplus copy keeps its place (loaded) but leaves the routes; once the routes
    in force no longer name it, the next plan unloads it. Ready copies stay first."""
    spec = model(replicas=1)
    pods = three_pods({"gpu-0": "loading", "gpu-1": "ready", "gpu-2": "ready"})
    in_force = {("mlp", "1"): {"http://127.1.0.3:8080", "http://127.1.0.4:8080"}}
    first = plan(pool(), {"mlp": spec}, pods, {("mlp", "1"): 100}, routed=in_force)
    stable = first.reports["mlp"].stable
    assert stable.pods == ["gpu-1"] and stable.retiring == ["gpu-2"]
    assert first.routes["mlp"].versions[0].endpoints == ("http://127.1.0.3:8080",)
    assert [m.name for m in first.documents["gpu-2"]] == ["mlp"]  # still loaded
    assert first.documents["gpu-0"] == []  # never routed: goes at once
    after = {("mlp", "1"): {"http://127.1.0.3:8080"}}
    second = plan(pool(), {"mlp": spec}, pods, {("mlp", "1"): 100}, routed=after)
    assert second.reports["mlp"].stable.retiring == []
    assert second.documents["gpu-2"] == [] and second.removed == [
        (("mlp", "1"), "gpu-0"),
        (("mlp", "1"), "gpu-2"),
    ]


@given(st.lists(st.sampled_from(["ready", "loading", "absent"]), min_size=3, max_size=3),
       st.integers(1, 3))  # fmt: skip
def test_a_scale_down_never_leaves_a_version_with_a_ready_copy_without_one(
    states: list[str], copies: int
) -> None:
    names = ["gpu-0", "gpu-1", "gpu-2"]
    pods = three_pods({n: s for n, s in zip(names, states, strict=True) if s != "absent"})
    spec = model(replicas=3, autoscaling={"maxReplicas": 3, "targetInFlight": 1})
    result = plan(pool(), {"mlp": spec}, pods, copies={"mlp": copies}, routed={})
    if "ready" in states:
        assert result.reports["mlp"].stable.endpoints


def test_copies_that_do_not_fit_are_a_blocked_scale_up_not_a_fault() -> None:
    from modelfleet.operator.desired import settle_scaled
    from modelfleet.operator.status import model_conditions

    spec = model(replicas=1, memoryMB=1500, autoscaling={"maxReplicas": 3, "targetInFlight": 1})
    other = model(priority=100, memoryMB=1500, replicas=1)
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
            pod("gpu-1", "127.1.0.3", {("big", "1"): "ready"})]  # fmt: skip
    result = plan(pool(), {"mlp": spec, "big": other}, pods, copies={"mlp": 2})
    stable = result.reports["mlp"].stable
    why = settle_scaled(stable, 1)
    assert "do not fit" in why and stable.replicas == 1 and not stable.unplaced
    conditions = {c["type"]: c for c in model_conditions(result.reports["mlp"])}
    assert conditions["Ready"]["status"] == "True" and conditions["Degraded"]["status"] == "False"


def test_the_model_is_ready_while_min_copies_are_and_more_load() -> None:
    from modelfleet.operator.desired import settle_scaled
    from modelfleet.operator.status import model_conditions

    spec = model(replicas=1, autoscaling={"maxReplicas": 3, "targetInFlight": 1})
    result = plan(pool(), {"mlp": spec}, three_pods({"gpu-0": "ready"}), copies={"mlp": 3})
    settle_scaled(result.reports["mlp"].stable, 1)
    ready = next(c for c in model_conditions(result.reports["mlp"]) if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "MinReplicasReady")


# -- the reconciler: status and events -------------------------------------------


class FakeKube:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []

    async def apply(self, obj: dict[str, Any]) -> None:
        return None

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:  # fmt: skip
        self.statuses[name] = status

    async def event(self, obj: dict[str, Any], reason: str, message: str,
                    kind: str = "Normal") -> None:  # fmt: skip
        self.events.append((reason, message, kind))


async def test_the_operator_scales_up_reports_and_remembers_the_change_in_status() -> None:
    from modelfleet.operator.desired import settle_scaled
    from modelfleet.operator.reconcile import Reconciler

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = model_obj(replicas=1, autoscaling={"maxReplicas": 3, "targetInFlight": 1,
                                             "scaleDownDelaySeconds": 5})  # fmt: skip
    objs, specs = await reconciler._models("gpu", [obj])
    busy = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 5, 0.0)}),
            busy_pod("gpu-1", "127.1.0.3", {})]  # fmt: skip
    reconciler._autoscale(objs, specs, busy)  # the first sample: no load yet
    reconciler.loads[("uid-mlp", "1")]._samples[0] = (-5.0, 5, 0.0, 10)  # 5 s ago
    scaling = reconciler._autoscale(objs, specs, busy)["mlp"]
    assert (scaling.decision.copies, scaling.decision.reason) == (3, "ScaledUp")
    assert scaling.place == 2 and "the pool has 2 runtime pod(s)" in scaling.blocked
    result = plan(pool(), specs, busy, copies={"mlp": scaling.place})
    settle_scaled(result.reports["mlp"].stable, 1)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z", scaling)
    status = kube.statuses["mlp"]
    assert status["desiredReplicas"] == 3 and status["autoscaling"]["reason"] == "ScaledUp"
    assert status["autoscaling"]["lastScaleTime"] and status["autoscaling"]["blocked"]
    selector = status["selector"].split(",")
    assert "app.kubernetes.io/instance=gpu" in selector
    assert "app.kubernetes.io/component=runtime" in selector
    reasons = [e[0] for e in kube.events]
    assert reasons == ["ScaledUp", "ScaleBlocked"]
    assert "copies 1 -> 3" in kube.events[0][1] and kube.events[1][2] == "Warning"
    # the next pass starts from what the status remembers: no second event
    again = reconciler._autoscale(objs, specs, busy)["mlp"]
    assert again.before == 3 and again.decision.copies == 3
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:01Z", again)
    assert [e[0] for e in kube.events] == ["ScaledUp", "ScaleBlocked"]


def test_every_autoscaling_status_field_is_declared() -> None:
    from modelfleet.operator.reconcile import Scaling
    from tests.operator.test_crds import declared, schema

    policy = Policy(1, 3, "inFlight", 1.0, 5.0)
    d = Decision(2, "WaitingForScaleDown", "x", 1e9, 0.5)
    status = {"autoscaling": Scaling(policy, d, 2, 2, 1e9, "no room").status(),
              "desiredReplicas": 2, "selector": "a=b"}  # fmt: skip
    node = schema("inferencemodel.yaml")["properties"]["status"]
    assert declared(node, status, "status") == []


async def test_a_restarted_operator_takes_the_copies_and_times_from_the_status() -> None:
    """What status remembers (copies, last change, low since) survives a restart: the
    load having been low for longer than the delay, the first decision scales down."""
    import datetime

    from modelfleet.operator.reconcile import Reconciler

    ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=100)
    stamp = ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = model_obj(replicas=1, autoscaling={"maxReplicas": 3, "targetInFlight": 1,
                                             "scaleDownDelaySeconds": 30})  # fmt: skip
    obj["status"] = {"autoscaling": {"desiredReplicas": 2, "lastScaleTime": stamp,
                                     "lowSince": stamp}}  # fmt: skip
    reconciler = Reconciler(FakeKube(), None)  # type: ignore[arg-type]
    objs, specs = await reconciler._models("gpu", [obj])
    idle = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 0, 0.0)}),
            busy_pod("gpu-1", "127.1.0.3", {("mlp", "1"): ("ready", 0, 0.0)})]  # fmt: skip
    first = reconciler._autoscale(objs, specs, idle)["mlp"]
    assert (first.before, first.decision.reason, first.decision.copies) == (2, "NoLoadSample", 2)
    assert first.status()["lowSince"] == stamp and first.status()["lastScaleTime"] == stamp
    reconciler.loads[("uid-mlp", "1")]._samples[0] = (-5.0, 0, 0.0, 20)
    second = reconciler._autoscale(objs, specs, idle)["mlp"]
    assert (second.decision.reason, second.decision.copies) == ("ScaledDown", 1)


async def test_a_canary_scales_on_its_own_load_and_the_stable_on_its_own() -> None:
    from modelfleet.operator.reconcile import Reconciler

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = model_obj(replicas=1, canary={"version": "2", "weight": 50, "replicas": 1,
                                        "source": MLP_SOURCE},
                    autoscaling={"maxReplicas": 3, "targetInFlight": 1})  # fmt: skip
    objs, specs = await reconciler._models("gpu", [obj])
    # the canary is busy (4 in flight), the stable version is not (0.5 in flight)
    pods = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 0, 0.0),
                                            ("mlp", "2"): ("ready", 4, 0.0)}),
            busy_pod("gpu-1", "127.1.0.3", {}), busy_pod("gpu-2", "127.1.0.4", {})]  # fmt: skip
    reconciler._autoscale(objs, specs, pods)  # the first sample: no load yet
    for version, in_flight in (("1", 0), ("2", 4)):
        reconciler.loads[("uid-mlp", version)]._samples[0] = (-5.0, in_flight, 0.0, 10)
    scaling = reconciler._autoscale(objs, specs, pods)["mlp"]
    assert scaling.decision.copies == 1
    assert scaling.canary is not None and scaling.canary.version == "2"
    assert (scaling.canary.before, scaling.canary.decision.copies) == (1, 3)
    result = plan(pool(replicas={"min": 3, "max": 3}), specs, pods,
                  copies={"mlp": 1}, canary_copies={"mlp": 3})  # fmt: skip
    stable, canary = result.reports["mlp"].versions[:2]
    assert (len(stable.pods), len(canary.pods)) == (1, 3)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z", scaling)
    auto = kube.statuses["mlp"]["autoscaling"]
    assert auto["canary"]["desiredReplicas"] == 3 and auto["canary"]["version"] == "2"
    assert any(r == "ScaledUp" and m.startswith("canary version 2: copies 1 -> 3")
               for r, m, _ in kube.events)  # fmt: skip
