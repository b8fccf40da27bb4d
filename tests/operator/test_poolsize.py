"""The pool's size (the second level of autoscaling): the pure decision, property
tested; placement on a draining pod; and a pool shrinking without a gap in service
(a copy on a draining pod serves until its replacement is ready, then leaves the
routes, then the pod)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.operator.desired import plan, sizing_demands
from modelfleet.operator.manifests import Owner, runtime_statefulset
from modelfleet.operator.placement import Demand, Pod, place
from modelfleet.operator.poolscale import ordinal
from modelfleet.operator.poolsize import PoolInputs, PoolPolicy, decide_pods, pods_needed
from tests.operator.builders import model, pod, pool

NOW = 1.8e9
demands = st.lists(
    st.builds(lambda i, p, r, m: Demand((f"m{i}", "1"), p, r, m),
              st.integers(0, 50), st.integers(0, 100), st.integers(0, 6),
              st.sampled_from([100.0, 250.0, 400.0, 600.0, 1000.0])),
    max_size=6, unique_by=lambda d: d.key,
)  # fmt: skip


@st.composite
def situations(draw: st.DrawFn) -> tuple[PoolPolicy, PoolInputs]:
    lo = draw(st.integers(1, 4))
    policy = PoolPolicy(lo, lo + draw(st.integers(0, 5)), 1000.0,
                        draw(st.sampled_from([0.0, 30.0, 300.0])))  # fmt: skip
    past = st.one_of(st.none(), st.floats(0, 900).map(lambda ago: NOW - ago))
    inputs = PoolInputs(draw(demands), draw(st.integers(0, 12)), NOW, draw(past), draw(past))
    return policy, inputs


def test_pods_needed_is_what_placement_needs_not_only_the_memory_sum() -> None:
    copies = [Demand(("a", "1"), 10, 3, 100.0)]
    assert pods_needed(copies, 1000, 10) == 3  # one copy of a version a pod
    # 1,800 MB fits in 2 x 1,000 MB by the sum, but three 600 MB copies need three pods
    three = [Demand((f"m{i}", "1"), 10, 1, 600.0) for i in range(3)]
    assert pods_needed(three, 1000, 10) == 3
    assert pods_needed(three, 1000, 2) is None
    assert pods_needed([Demand(("big", "1"), 10, 1, 1500.0)], 1000, 10) is None
    assert pods_needed([], 1000, 5) == 0


@given(situations())
def test_never_below_min_nor_above_max(case: tuple[PoolPolicy, PoolInputs]) -> None:
    policy, inputs = case
    d = decide_pods(policy, inputs)
    assert policy.min_pods <= d.pods <= policy.max_pods


@given(situations())
def test_growth_is_at_once_to_what_the_copies_need(case: tuple[PoolPolicy, PoolInputs]) -> None:
    policy, inputs = case
    d = decide_pods(policy, inputs)
    if not policy.min_pods <= inputs.pods <= policy.max_pods:
        return
    if d.needed is None:
        assert d.pods == policy.max_pods and d.reason == "ScaleBlocked"
    elif d.needed > inputs.pods:
        assert d.pods == d.needed and d.reason == "ScaledUp"
    else:
        assert d.pods <= inputs.pods and d.pods >= max(policy.min_pods, d.needed)


@given(situations())
def test_shrinking_waits_for_the_delay_and_a_steady_pool_stays(
    case: tuple[PoolPolicy, PoolInputs],
) -> None:
    policy, inputs = case
    d = decide_pods(policy, inputs)
    if d.pods < inputs.pods and d.reason == "ScaledDown":
        waited = min(NOW - (inputs.low_since or NOW),
                     NOW - inputs.last_change if inputs.last_change is not None else 1e18)  # fmt: skip
        assert waited >= policy.scale_down_delay_s - 1e-6
    # no flapping: asked again with its own answer, the pool stays where it is
    if d.reason != "Clamped":
        again = decide_pods(policy, PoolInputs(inputs.demands, d.pods, NOW + 1, NOW, d.low_since))
        assert again.pods == d.pods


def test_scale_down_after_the_delay_only() -> None:
    policy = PoolPolicy(1, 4, 1000.0, 60.0)
    light = [Demand(("a", "1"), 10, 1, 300.0)]
    first = decide_pods(policy, PoolInputs(light, 3, NOW))
    assert (first.pods, first.reason, first.low_since) == (3, "WaitingForScaleDown", NOW)
    later = decide_pods(policy, PoolInputs(light, 3, NOW + 61, None, first.low_since))
    assert (later.pods, later.reason) == (1, "ScaledDown")
    blocked = decide_pods(policy, PoolInputs([Demand(("a", "1"), 10, 6, 300.0)], 2, NOW))
    assert (blocked.pods, blocked.reason) == (4, "ScaleBlocked")
    assert "more than replicas.max 4" in blocked.message


def test_a_draining_pod_keeps_what_it_holds_and_takes_nothing_new() -> None:
    pods = [Pod("p-0", 1000), Pod("p-1", 1000, accepts_new=False)]
    got = place(pods, [Demand(("a", "1"), 10, 1, 300.0), Demand(("b", "1"), 10, 2, 300.0)],
                {("a", "1"): ["p-1"]})  # fmt: skip
    assert got.pods_of[("a", "1")] == ["p-1"]
    assert got.pods_of[("b", "1")] == ["p-0"] and got.unplaced[("b", "1")]
    # nor is anything evicted from it for a higher priority
    high = place(pods, [Demand(("a", "1"), 1, 1, 1000.0), Demand(("h", "1"), 99, 1, 1000.0),
                        Demand(("x", "1"), 1, 1, 1000.0)], {("a", "1"): ["p-1"], ("x", "1"): ["p-0"]})  # fmt: skip
    assert high.pods_of[("h", "1")] == ["p-0"] and high.pods_of[("a", "1")] == ["p-1"]


def test_a_copy_moves_off_a_draining_pod_without_a_gap_in_service() -> None:
    spec = {"mlp": model(replicas=1)}
    pool_spec = pool(replicas={"min": 1, "max": 2})
    key = ("mlp", "1")
    url1 = "http://10.0.0.2:8080"
    # 1. the only copy is on gpu-1, which drains: a copy is placed on gpu-0, gpu-1's serves
    pods = [pod("gpu-0", "10.0.0.1"), pod("gpu-1", "10.0.0.2", {key: "ready"})]
    first = plan(pool_spec, spec, pods, {key: 100}, None, {key: {url1}}, ["gpu-1"])
    assert first.placement.pods_of[key] == ["gpu-0", "gpu-1"]
    assert first.reports["mlp"].stable.endpoints == [url1]
    assert [m.name for m in first.documents["gpu-1"]] == ["mlp"]
    # 2. the new copy is ready: the old one leaves the routes, still loaded
    pods = [pod("gpu-0", "10.0.0.1", {key: "ready"}), pod("gpu-1", "10.0.0.2", {key: "ready"})]
    second = plan(pool_spec, spec, pods, {key: 100}, None, {key: {url1}}, ["gpu-1"])
    stable = second.reports["mlp"].stable
    assert stable.endpoints == ["http://10.0.0.1:8080"] and stable.retiring == ["gpu-1"]
    assert [m.name for m in second.documents["gpu-1"]] == ["mlp"]
    # 3. the routes in force no longer name it: it leaves the pod, which is then empty
    third = plan(pool_spec, spec, pods, {key: 100}, None, {key: {"http://10.0.0.1:8080"}},
                 ["gpu-1"])  # fmt: skip
    assert third.documents["gpu-1"] == [] and third.placement.pods_of[key] == ["gpu-0"]


def test_the_pool_is_sized_on_the_copies_the_autoscaler_wants() -> None:
    specs = {"hot": model(replicas=1, memoryMB=300), "cold": model(replicas=1, memoryMB=300)}
    pods = [pod("gpu-0", "10.0.0.1")]
    wanted = sizing_demands(specs, pods, {"hot": 3})
    assert sorted((d.key[0], d.replicas) for d in wanted) == [("cold", 1), ("hot", 3)]
    assert pods_needed(wanted, 1000, 5) == 3


@pytest.mark.parametrize(("name", "n"), [("gpu-0", 0), ("my-pool-12", 12), ("odd", -1)])
def test_ordinal(name: str, n: int) -> None:
    assert ordinal(name) == n


def test_reapplying_the_pool_keeps_the_pods_it_runs_within_min_and_max() -> None:
    owner = Owner("InferencePool", "gpu", "ml", "uid-gpu")
    spec = pool(replicas={"min": 2, "max": 4})
    counts = [runtime_statefulset(owner, spec, n)["spec"]["replicas"] for n in (None, 1, 3, 9)]
    assert counts == [2, 2, 3, 4]
