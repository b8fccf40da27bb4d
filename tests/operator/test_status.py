"""Conditions and status a user reads with kubectl."""

from __future__ import annotations

from typing import Any

from modelfleet.operator.desired import plan
from modelfleet.operator.placement import Demand, Pod, place
from modelfleet.operator.status import comparable, model_status, pool_status, with_times
from tests.operator.builders import model, pod, pool

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def status_for(
    pods: list[Any], previous: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    report = plan(pool(), {"mlp": model(**spec)}, pods).reports["mlp"]
    return model_status(report, "http://mlp.ml.svc/v2/models/mlp/infer", previous or {}, 3, T0)


def test_a_served_model_is_ready_placed_not_degraded_not_progressing() -> None:
    st = status_for([pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})], replicas=1)
    c = conditions(st)
    assert (c["Ready"]["status"], c["Placed"]["status"], c["Degraded"]["status"],
            c["Progressing"]["status"]) == ("True", "True", "False", "False")  # fmt: skip
    assert st["readyReplicas"] == 1 and st["observedGeneration"] == 3
    assert st["url"] == "http://mlp.ml.svc/v2/models/mlp/infer"
    assert st["versions"][0] | {"requests": 0} == {
        "version": "1", "role": "stable", "weight": 100, "replicas": 1, "readyReplicas": 1,
        "pods": ["gpu-0"], "endpoints": ["http://127.1.0.2:8080"], "memoryMB": 500,
        "declaredMemoryMB": 500, "requests": 0, "errors": 1}  # fmt: skip


def test_a_loading_model_is_progressing_and_not_ready() -> None:
    c = conditions(status_for([pod("gpu-0", "127.1.0.2", {("mlp", "1"): "warming"})], replicas=1))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "Loading"
    assert c["Progressing"]["status"] == "True" and "gpu-0" in c["Progressing"]["message"]


def test_a_model_too_big_for_any_pod_is_degraded_with_a_message_saying_so() -> None:
    c = conditions(status_for([pod("gpu-0", "127.1.0.2")], replicas=1, memoryMB=5000))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "DoesNotFit"
    assert "5000 MB" in c["Degraded"]["message"] and "2000 MB" in c["Degraded"]["message"]
    assert c["Placed"]["status"] == "False"


def test_a_failed_load_is_degraded_with_the_reason_and_the_last_failure() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "failed"}, reason="checksum mismatch")]
    st = status_for(pods, replicas=1)
    c = conditions(st)
    assert (
        c["Degraded"]["reason"] == "LoadFailed" and "checksum mismatch" in c["Degraded"]["message"]
    )
    assert st["lastFailure"]["reason"] == "LoadFailed" and st["lastFailure"]["time"] == T0


def test_an_evicted_model_keeps_naming_who_took_its_place_until_it_is_back() -> None:
    pods = [Pod("gpu-0", 1000)]
    low, high = Demand(("low", "1"), 0, 1, 800), Demand(("high", "1"), 100, 1, 800)
    evicting = place(pods, [low, high], {low.key: ["gpu-0"]})
    assert evicting.unplaced[low.key].startswith("evicted by high version 1")
    first = status_for([pod("gpu-0", "127.1.0.2")], replicas=1, memoryMB=5000)
    assert "evicted" not in str(first["conditions"])  # merely too big
    previous = {"evictedBy": {"1": evicting.unplaced[low.key]}}
    later = status_for([pod("gpu-0", "127.1.0.2")], previous, replicas=1, memoryMB=5000)
    c = conditions(later)
    assert c["Degraded"]["reason"] == "Evicted" and "evicted by high" in c["Degraded"]["message"]
    back = status_for([pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})], later, replicas=1)
    assert back["evictedBy"] == {"1": None}  # the merge patch removes it
    assert conditions(back)["Degraded"]["status"] == "False"


def test_transition_times_change_only_when_the_status_flips() -> None:
    first = with_times([{"type": "Ready", "status": "False"}], [], T0, 1)
    same = with_times([{"type": "Ready", "status": "False"}], first, T1, 2)
    flipped = with_times([{"type": "Ready", "status": "True"}], same, T1, 2)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == T1


def test_status_comparison_ignores_times_and_live_counters() -> None:
    a = status_for([pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})], replicas=1)
    b = {**a, "versions": [{**a["versions"][0], "requests": 999}],
         "conditions": [{**c, "lastTransitionTime": T1} for c in a["conditions"]]}  # fmt: skip
    assert comparable(a) == comparable(b)
    assert comparable(a) != comparable({**a, "readyReplicas": 0})


def test_pool_status_names_pods_that_do_not_answer() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})]
    report = plan(pool(), {"mlp": model(replicas=1)}, pods).reports
    st = pool_status(pods, ["gpu-1"], report, {}, 1, T0)
    c = conditions(st)
    assert c["Ready"]["status"] == "False" and "gpu-1" in c["Ready"]["message"]
    assert st["pods"][0]["models"] == ["mlp:1"] and st["readyReplicas"] == 1 and st["models"] == 1


def test_the_shed_rate_reaches_status_beside_the_request_and_error_rates() -> None:
    from modelfleet.operator.rates import RateWindow

    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "1"): "ready"})]  # fmt: skip
    for p in pods:  # each pod's admission refused 20 of its 100 requests (all of its errors)
        for seen in p.state.actual.models:
            object.__setattr__(seen, "served", 80)
            object.__setattr__(seen, "errors", 20)
            object.__setattr__(seen, "shed", 20)
    report = plan(pool(), {"mlp": model(replicas=2)}, pods).reports["mlp"]
    assert report.stable.shed == 40
    window = RateWindow()
    window.add(0.0, 0, 0, 0)
    rates = window.add(10.0, report.stable.requests, report.stable.errors, report.stable.shed)
    assert rates is not None
    st = model_status(report, "http://x", {}, 1, T0, {"1": rates})
    version = st["versions"][0]
    assert (version["requestRate"], version["errorRate"], version["shedRate"]) == (20.0, 0.2, 0.2)
    assert comparable(st) == comparable({**st, "versions": [{**version, "shedRate": 0.5}]})


def test_objective_attainment_reaches_status_per_version_as_a_volatile_figure() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "1"): "ready"})]  # fmt: skip
    for p, (met, missed) in zip(pods, [(90, 10), (50, 50)], strict=True):
        for seen in p.state.actual.models:
            object.__setattr__(seen, "served", met + missed)
            object.__setattr__(seen, "objective_met", met)
            object.__setattr__(seen, "objective_missed", missed)
    report = plan(pool(), {"mlp": model(replicas=2, latencyObjectiveMs=50)}, pods).reports["mlp"]
    assert (report.stable.objective_met, report.stable.objective_missed) == (140, 60)
    st = model_status(report, "http://x", {}, 1, T0, None, {"1": 0.7})
    version = st["versions"][0]
    assert version["objectiveAttainment"] == 0.7
    assert "objectiveAttainment" not in model_status(report, "http://x", {}, 1, T0)["versions"][0]
    assert comparable(st) == comparable(
        {**st, "versions": [{**version, "objectiveAttainment": 0.1}]}
    )
