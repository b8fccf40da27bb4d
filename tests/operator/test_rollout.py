"""Version changes, canaries, rollback and promotion as pure plans: what each
pass places, routes and reports, given the pods and the routes in force."""

from __future__ import annotations

from typing import Any

import yaml

from modelfleet.api.runtime_document import parse_document
from modelfleet.gateway.routes import parse_routes
from modelfleet.operator.desired import Plan, plan, runtime_document
from modelfleet.operator.observed import Key, PodView, RuntimeState
from modelfleet.operator.podapi import same_models
from modelfleet.operator.reconcile import routed, routes_file, state_file
from modelfleet.operator.spec import ModelSpec
from modelfleet.operator.status import model_status
from tests.operator.builders import MLP_SOURCE, model, pool

V2_SOURCE = {**MLP_SOURCE, "path": "mlp-v2.safetensors"}
IPS = {"gpu-0": "127.1.0.2", "gpu-1": "127.1.0.3"}


def pods_after(result: Plan, states: dict[Key, str] | None = None) -> list[PodView]:
    """The pods as they answer once they took the plan's documents: every version
    in ``states`` (default: all ready)."""
    out = []
    for name, entries in result.documents.items():
        keys = [e.key for e in entries]
        observed = [{"name": n, "version": v, "state": (states or {}).get((n, v), "ready"),
                     "memory_mb": 100.0, "reason": "broken file"} for n, v in keys]  # fmt: skip
        desired = [e.model_dump(mode="json") for e in entries]  # as the runtime reports them
        state = RuntimeState.model_validate(
            {"desired": {"models": desired}, "actual": {"ready": True, "models": observed}}
        )
        out.append(PodView(name, IPS[name], state))
    return out


def in_force(result: Plan) -> dict[Key, int]:
    """What the routes ConfigMap says once the plan's routes were written."""
    return routed({"routes.yaml": routes_file(result.routes)})


def weights(result: Plan, name: str = "mlp") -> dict[str, int]:
    """Each version's percent of the traffic, as the gateway will split it."""
    route = parse_routes({"models": result.routes}).models[name]
    routed = {v.version: v.weight for v in route.versions if v.endpoints and v.weight}
    return {v: round(100 * w / sum(routed.values())) for v, w in routed.items()}


def hosted(result: Plan) -> set[Key]:
    return {e.key for d in result.documents.values() for e in d}


def status(result: Plan, name: str = "mlp") -> dict[str, Any]:
    report = result.reports[name]
    st = model_status(
        report, "http://mlp.ml.svc/v2/models/mlp/infer", {}, 2, "2026-01-01T00:00:00Z"
    )
    st["by_type"] = {c["type"]: c for c in st["conditions"]}
    return st


def serving_v1(spec: ModelSpec, budget: int = 2000, others: dict[str, ModelSpec] | None = None,
               ) -> tuple[list[PodView], dict[Key, int]]:  # fmt: skip
    first = plan(pool(memoryBudgetMB=budget), {"mlp": spec, **(others or {})},
                 pods_after(plan(pool(), {}, [PodView(n, ip) for n, ip in IPS.items()])))  # fmt: skip
    pods = pods_after(first)
    settled = plan(pool(memoryBudgetMB=budget), {"mlp": spec, **(others or {})}, pods)
    return pods_after(settled), in_force(settled)


def test_a_version_change_loads_the_new_one_beside_the_old_then_moves_traffic_then_unloads() -> (
    None
):
    pods, routes = serving_v1(model(replicas=2))
    assert weights(plan(pool(), {"mlp": model(replicas=2)}, pods, routes)) == {"1": 100}
    new = {"mlp": model(replicas=2, version="2", source=V2_SOURCE)}

    # 1. The new version is placed and warms; the old one keeps all the traffic.
    step1 = plan(pool(), new, pods, routes)
    assert hosted(step1) == {("mlp", "1"), ("mlp", "2")}
    assert [(v.version, v.role) for v in step1.reports["mlp"].versions] == [
        ("2", "stable"), ("1", "draining")]  # fmt: skip
    loading = pods_after(step1, {("mlp", "2"): "warming"})
    step1 = plan(pool(), new, loading, routes)
    assert weights(step1) == {"1": 100}
    st = status(step1)
    assert st["by_type"]["Progressing"]["reason"] == "RolloutLoading"
    assert st["by_type"]["Ready"]["status"] == "True"  # the old version serves meanwhile
    assert "version 1 keeps the traffic" in st["by_type"]["Progressing"]["message"]
    for docs in step1.documents.values():  # the runtime accepts the old version's entry as is
        assert parse_document(yaml.safe_load(state_file(pool(), docs))) == runtime_document(
            pool(), docs
        )
    assert all(same_models(list(p.state.desired.models), step1.documents[p.name])  # type: ignore[union-attr]
               for p in loading), "the old version's entry changed: its pods would reload it"  # fmt: skip

    # 2. Ready everywhere: the traffic moves; the old version stays loaded this pass.
    ready = pods_after(step1)
    step2 = plan(pool(), new, ready, routes)
    assert weights(step2) == {"2": 100}
    assert hosted(step2) == {("mlp", "1"), ("mlp", "2")}
    assert status(step2)["by_type"]["Progressing"]["reason"] == "RolloutDraining"

    # 3. Once the routes in force show no traffic for it, the old version is unloaded.
    step3 = plan(pool(), new, ready, in_force(step2))
    assert hosted(step3) == {("mlp", "2")} and weights(step3) == {"2": 100}
    assert sorted(step3.removed) == [(("mlp", "1"), "gpu-0"), (("mlp", "1"), "gpu-1")]
    assert status(step3)["by_type"]["Progressing"]["reason"] == "Converged"


def test_the_last_of_two_quick_edits_wins_and_the_superseded_version_is_unloaded() -> None:
    pods, routes = serving_v1(model(replicas=2))
    v2 = plan(pool(), {"mlp": model(replicas=2, version="2", source=V2_SOURCE)}, pods, routes)
    half_way = pods_after(v2, {("mlp", "2"): "loading"})
    v3 = {"mlp": model(replicas=2, version="3", source=V2_SOURCE)}
    step = plan(pool(), v3, half_way, routes)
    assert hosted(step) == {("mlp", "1"), ("mlp", "3")}  # 2 never served: gone at once
    assert weights(step) == {"1": 100}


def test_a_canary_gets_its_weight_rollback_puts_traffic_back_then_unloads_it() -> None:
    pods, routes = serving_v1(model(replicas=1))
    canary = {"mlp": model(replicas=1, canary={"version": "2", "weight": 25, "source": V2_SOURCE})}
    placed = plan(pool(), canary, pods, routes)
    assert weights(placed) == {"1": 100}  # not ready yet: no traffic
    with_canary = plan(pool(), canary, pods_after(placed), routes)
    assert weights(with_canary) == {"1": 75, "2": 25}
    routes = in_force(with_canary)
    rollback = plan(pool(), {"mlp": model(replicas=1)}, pods_after(with_canary), routes)
    assert weights(rollback) == {"1": 100}
    assert ("mlp", "2") in hosted(rollback)  # still loaded while the gateways switch
    gone = plan(pool(), {"mlp": model(replicas=1)}, pods_after(rollback), in_force(rollback))
    assert hosted(gone) == {("mlp", "1")}


def test_promotion_reuses_the_canarys_warm_copies_without_a_reload() -> None:
    pods, routes = serving_v1(model(replicas=1))
    canary = {"mlp": model(replicas=1, canary={"version": "2", "weight": 25, "source": V2_SOURCE})}
    with_canary = plan(pool(), canary, pods_after(plan(pool(), canary, pods, routes)), routes)
    pods, routes = pods_after(with_canary), in_force(with_canary)
    promoted = {"mlp": model(replicas=1, version="2", source=V2_SOURCE)}
    step = plan(pool(), promoted, pods, routes)
    assert step.placed == []  # nothing new anywhere
    assert weights(step) == {"2": 100}
    for p in pods:  # the entry the pods have for version 2 is the one they get
        v2 = [e for e in step.documents[p.name] if e.version == "2"]
        had = [e for e in p.state.desired.models if e["version"] == "2"]  # type: ignore[union-attr]
        assert same_models(had, v2)
    assert hosted(plan(pool(), promoted, pods_after(step), in_force(step))) == {("mlp", "2")}


def test_a_broken_canary_gets_no_traffic_and_the_model_says_why() -> None:
    pods, routes = serving_v1(model(replicas=1))
    canary = {"mlp": model(replicas=1, canary={"version": "2", "weight": 50, "source": V2_SOURCE})}
    placed = plan(pool(), canary, pods, routes)
    failed = plan(pool(), canary, pods_after(placed, {("mlp", "2"): "failed"}), routes)
    assert weights(failed) == {"1": 100}
    st = status(failed)
    assert st["by_type"]["Degraded"]["status"] == "True"
    assert "version 2 (canary) failed on" in st["by_type"]["Degraded"]["message"]
    assert "broken file" in st["by_type"]["Degraded"]["message"]
    assert st["by_type"]["Ready"]["status"] == "True"


def test_with_no_room_for_a_second_copy_a_lower_priority_model_makes_way() -> None:
    low = model(priority=0, replicas=2, memoryMB=400)
    pods, routes = serving_v1(model(priority=10, replicas=2, memoryMB=500), 1000, {"low": low})
    new = {"mlp": model(priority=10, replicas=2, memoryMB=500, version="2", source=V2_SOURCE),
           "low": low}  # fmt: skip
    step = plan(pool(memoryBudgetMB=1000), new, pods, routes)
    assert hosted(step) == {("mlp", "1"), ("mlp", "2")}
    assert step.placement.evicted[("low", "1")] == ("mlp", "2")
    assert weights(step) == {"1": 100}


def test_with_no_room_and_nothing_to_evict_the_rollout_is_blocked_and_the_old_one_serves() -> None:
    high = model(priority=50, replicas=2, memoryMB=400)
    pods, routes = serving_v1(model(priority=10, replicas=2, memoryMB=500), 1000, {"high": high})
    new = {"mlp": model(priority=10, replicas=2, memoryMB=500, version="2", source=V2_SOURCE),
           "high": high}  # fmt: skip
    step = plan(pool(memoryBudgetMB=1000), new, pods, routes)
    assert ("mlp", "2") not in hosted(step) and weights(step) == {"1": 100}
    st = status(step)
    blocked = st["by_type"]["RolloutBlocked"]
    assert (blocked["status"], blocked["reason"]) == ("True", "InsufficientMemory")
    assert "version 1 keeps serving" in blocked["message"] and "500 MB" in blocked["message"]
    assert st["by_type"]["Progressing"]["reason"] == "RolloutBlocked"
    assert st["by_type"]["Ready"]["status"] == "True"


def test_a_restarted_operator_finishes_the_step_it_finds() -> None:
    """Nothing is remembered between passes but the pods and the routes in force:
    a fresh plan from the same cluster makes the same decision."""
    pods, routes = serving_v1(model(replicas=2))
    new = {"mlp": model(replicas=2, version="2", source=V2_SOURCE)}
    ready = pods_after(plan(pool(), new, pods, routes))
    moved = plan(pool(), new, ready, routes)
    again = plan(pool(), new, ready, routes)  # the operator died before writing the routes
    assert weights(again) == weights(moved) == {"2": 100}
    assert hosted(plan(pool(), new, ready, in_force(moved))) == {("mlp", "2")}
