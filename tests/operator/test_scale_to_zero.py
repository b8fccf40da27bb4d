"""Scale to zero: the decision's rule, the plan, routes and status of a model at zero
copies, and the operator reading the gateways' held requests to place a first copy."""

from __future__ import annotations

import time
from typing import Any

from modelfleet.operator.autoscale import Inputs, Load, Policy, decide
from modelfleet.operator.desired import plan, settle_scaled
from modelfleet.operator.reconcile import Reconciler
from modelfleet.operator.status import model_conditions
from tests.operator.builders import model, model_obj, pool
from tests.operator.test_autoscale import FakeKube, busy_pod, three_pods

ZERO = Policy(0, 1, "inFlight", 1.0, 3.0)
IDLE = Load(0, 0, 0)
AUTO = {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1, "scaleDownDelaySeconds": 3}


def test_no_traffic_for_the_delay_scales_one_copy_to_zero() -> None:
    waiting = decide(ZERO, Inputs(IDLE, 1, 1, 100.0, None, None))
    assert (waiting.copies, waiting.reason, waiting.low_since) == (1, "WaitingForScaleDown", 100.0)
    d = decide(ZERO, Inputs(IDLE, 1, 1, 103.0, None, 100.0))
    assert (d.copies, d.reason) == (0, "ScaledToZero") and "no traffic" in d.message
    # traffic, requests in flight or requests waiting at the gateways keep the copy
    for load, wait in ((Load(0, 0, 0.2), 0), (Load(0.5, 0, 0), 0), (IDLE, 2)):
        kept = decide(ZERO, Inputs(load, 1, 1, 103.0, None, 100.0, waiting=wait))
        assert kept.copies == 1 and kept.reason == "Steady"


def test_more_copies_go_down_to_one_before_zero() -> None:
    policy = Policy(0, 4, "inFlight", 1.0, 3.0)
    d = decide(policy, Inputs(IDLE, 3, 3, 103.0, None, 100.0))
    assert (d.copies, d.reason) == (1, "ScaledDown")


def test_from_zero_demand_at_the_gateway_gives_one_copy() -> None:
    stay = decide(ZERO, Inputs(None, 0, 0, 200.0, 150.0))
    assert (stay.copies, stay.reason) == (0, "ScaledToZero")
    up = decide(ZERO, Inputs(None, 0, 0, 200.0, 150.0, waiting=3))
    assert (up.copies, up.reason) == (1, "ScaledUp")
    assert "from zero: 3 request(s) waiting at the gateway" in up.message
    # a request held after the scale to zero (it may have timed out since) counts too
    held = decide(ZERO, Inputs(IDLE, 0, 0, 200.0, 150.0, held_at=160.0))
    assert (held.copies, held.reason) == (1, "ScaledUp")
    older = decide(ZERO, Inputs(IDLE, 0, 0, 200.0, 150.0, held_at=140.0))
    assert older.copies == 0
    # a model whose min is above zero is brought back to it
    assert decide(Policy(1, 2, "inFlight", 1.0, 3.0), Inputs(None, 0, 0, 1.0)).copies == 1


def test_at_zero_the_copy_leaves_the_routes_then_the_pod_and_the_route_is_cold() -> None:
    spec = model(replicas=1, autoscaling=AUTO)
    pods = three_pods({"gpu-0": "ready"})
    in_force = {("mlp", "1"): {"http://127.1.0.2:8080"}}
    first = plan(pool(), {"mlp": spec}, pods, {("mlp", "1"): 100}, {"mlp": 0}, in_force)
    stable = first.reports["mlp"].stable
    assert stable.replicas == 0 and stable.retiring == ["gpu-0"] and not stable.endpoints
    route = first.routes["mlp"]
    assert route.cold and [v.endpoints for v in route.versions] == [()]
    assert [m.name for m in first.documents["gpu-0"]] == ["mlp"]  # unloaded next pass
    second = plan(pool(), {"mlp": spec}, pods, {}, {"mlp": 0}, {("mlp", "1"): set()})
    assert second.documents["gpu-0"] == [] and second.removed == [(("mlp", "1"), "gpu-0")]
    assert second.routes["mlp"].cold and "mlp" in second.routes
    assert settle_scaled(second.reports["mlp"].stable, 0) == ""
    conditions = {c["type"]: c for c in model_conditions(second.reports["mlp"])}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False", "ScaledToZero")  # fmt: skip
    assert conditions["Degraded"]["status"] == "False"
    assert conditions["Placed"]["status"] == "True"


def test_the_route_is_warm_once_a_copy_is_ready_and_never_cold_without_min_zero() -> None:
    spec = model(replicas=1, autoscaling=AUTO)
    loading = plan(pool(), {"mlp": spec}, three_pods({"gpu-0": "loading"}), copies={"mlp": 1})
    assert loading.routes["mlp"].cold  # the first copy warms: requests still held
    ready = plan(pool(), {"mlp": spec}, three_pods({"gpu-0": "ready"}), copies={"mlp": 1})
    assert not ready.routes["mlp"].cold and ready.routes["mlp"].versions[0].endpoints
    assert "cold" not in ready.routes["mlp"].model_fields_set
    fixed = plan(pool(), {"mlp": model(replicas=1)}, three_pods({"gpu-0": "loading"}))
    assert not fixed.routes["mlp"].cold


class FakeAPI:
    def __init__(self, answers: dict[str, dict[str, dict[str, Any]] | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def gateway_demand(self, ip: str) -> dict[str, dict[str, Any]] | None:
        self.asked.append(ip)
        return self.answers.get(ip)


def gateways(*ips: str) -> list[dict[str, Any]]:
    return [{"metadata": {"name": f"gw-{i}"}, "status": {"podIP": ip}} for i, ip in enumerate(ips)]


async def test_the_operator_reads_demand_only_for_a_model_at_zero_and_places_one_copy() -> None:
    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = model_obj(replicas=1, autoscaling=AUTO)
    obj["status"] = {"autoscaling": {"desiredReplicas": 0, "reason": "ScaledToZero",
                                     "lastScaleTime": "2026-01-01T00:00:00Z"}}  # fmt: skip
    objs, specs = await reconciler._models("gpu", [obj])
    pods = [busy_pod("gpu-0", "127.1.0.2", {}), busy_pod("gpu-1", "127.1.0.3", {})]
    api = FakeAPI({"10.0.0.1": {"mlp": {"waiting": 2, "held": 2, "last_held_at": 1.8e9}},
                   "10.0.0.2": {"mlp": {"waiting": 1, "held": 5, "last_held_at": 1.7e9},
                                "other": {"waiting": 9}}})  # fmt: skip
    demand = await reconciler._demand(api, gateways("10.0.0.1", "10.0.0.2"), objs, specs, pods)  # type: ignore[arg-type]
    assert demand == {"mlp": (3, 1.8e9)}
    scaling = reconciler._autoscale(objs, specs, pods, demand)["mlp"]
    assert (scaling.before, scaling.decision.copies, scaling.place) == (0, 1, 1)
    assert scaling.busy and "from zero: 3 request(s) waiting" in scaling.decision.message
    result = plan(pool(), specs, pods, copies={"mlp": scaling.place})
    assert [k for k, _ in result.placed] == [("mlp", "1")]
    settle_scaled(result.reports["mlp"].stable, 0)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:01:00Z", scaling)
    assert [e[0] for e in kube.events] == ["ScaledUp"]
    assert kube.statuses["mlp"]["autoscaling"]["desiredReplicas"] == 1
    # a model with a ready copy (or without min 0) does not make the operator ask
    warm = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 0, 0.0)})]
    quiet = FakeAPI({})
    obj["status"] = {"autoscaling": {"desiredReplicas": 1}}
    reconciler.statuses.clear()
    assert await reconciler._demand(quiet, gateways("10.0.0.1"), objs, specs, warm) == {}  # type: ignore[arg-type]
    assert quiet.asked == []


async def test_scaling_to_zero_reports_an_event_and_the_status_reason() -> None:
    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    obj = model_obj(replicas=1, autoscaling=AUTO)
    objs, specs = await reconciler._models("gpu", [obj])
    idle = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 0, 0.0)})]
    reconciler._autoscale(objs, specs, idle)  # the first sample
    reconciler.loads[("uid-mlp", "1")]._samples[0] = (time.monotonic() - 5, 0, 0.0, 10)
    first = reconciler._autoscale(objs, specs, idle)["mlp"]
    assert first.decision.reason == "WaitingForScaleDown"
    obj["status"] = {"autoscaling": {"desiredReplicas": 1,
                                     "lowSince": "2000-01-01T00:00:00Z"}}  # fmt: skip
    reconciler.loads[("uid-mlp", "1")]._samples[0] = (time.monotonic() - 5, 0, 0.0, 10)
    scaling = reconciler._autoscale(objs, specs, idle)["mlp"]
    assert (scaling.decision.copies, scaling.decision.reason) == (0, "ScaledToZero")
    assert scaling.busy
    result = plan(pool(), specs, idle, copies={"mlp": 0}, routed={("mlp", "1"): set()})
    settle_scaled(result.reports["mlp"].stable, 0)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z", scaling)
    status = kube.statuses["mlp"]
    assert status["desiredReplicas"] == 0 and status["autoscaling"]["reason"] == "ScaledToZero"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ScaledToZero")
    assert [e[0] for e in kube.events] == ["ScaledToZero"]


class ShedAPI:
    def __init__(self, answers: dict[str, dict[str, dict[str, int]] | None]) -> None:
        self.answers = answers

    async def gateway_shed(self, ip: str) -> dict[str, dict[str, int]] | None:
        return self.answers.get(ip)


async def test_requests_refused_at_the_gateways_count_in_the_models_shed_rate() -> None:
    """What the gateways refused never reached a runtime: the operator sums their
    counts over the pool's gateways and adds them to the version's failed and shed
    requests, so ``shedRate`` is the share refused anywhere (a gateway that does not
    answer counts nothing)."""
    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    api = ShedAPI({"10.0.0.1": {"mlp": {"1": 30}, "other": {"2": 4}},
                   "10.0.0.2": {"mlp": {"1": 10}}, "10.0.0.3": None})  # fmt: skip
    ips = gateways("10.0.0.1", "10.0.0.2", "10.0.0.3")
    sheds = await reconciler._gateway_sheds(api, ips)  # type: ignore[arg-type]
    assert sheds == {"mlp": {"1": 40}, "other": {"2": 4}}
    objs, specs = await reconciler._models("gpu", [model_obj(replicas=1)])
    served = [busy_pod("gpu-0", "127.1.0.2", {("mlp", "1"): ("ready", 0, 0.0)})]  # 10 served
    result = plan(pool(), specs, served)
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:00Z")
    window = reconciler.rates[("uid-mlp", "1")]
    window._samples[0] = (time.monotonic() - 10, 0, 0, 0)  # ten seconds ago: nothing yet
    reconciler.statuses.clear()  # as if the live figures were due for a refresh
    await reconciler._model_status(objs[0], result, "2026-01-01T00:00:10Z",
                                   gateway_shed=sheds["mlp"])  # fmt: skip
    [version] = kube.statuses["mlp"]["versions"]
    assert version["shedRate"] == 0.8 and version["errorRate"] == 0.8  # 40 of 50
