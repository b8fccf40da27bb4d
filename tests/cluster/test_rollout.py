"""Version changes on the real control plane, with the kwok pods' runtime and
gateway containers running (``fleet.py``): rollouts under a steady request
stream, canary splits, rollback, promotion without a reload, a broken canary,
operator kills mid-rollout, and rollouts when the pool has no spare memory."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import Fleet, Stream, model_yaml, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = "mf-roll", "roll"
V2 = {"path": "mlp-v2.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
V3 = {"path": "mlp-v3.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
SPLIT_REQUESTS = 4000


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    for copy in ("mlp-v2.safetensors", "mlp-v3.safetensors"):
        shutil.copy(model_store / "mlp.safetensors", model_store / copy)
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("roll"), model_store, NS, POOL) as f:
        yield f


def patch(fleet: Fleet, name: str, spec: dict[str, Any]) -> None:
    fleet.k.kubectl("patch", "inferencemodel", name, "-n", NS, "--type", "merge",
                    "-p", json.dumps({"spec": spec}))  # fmt: skip


def ready(fleet: Fleet, name: str, **spec: Any) -> None:
    fleet.apply(model_yaml(name, NS, POOL, **spec))
    wait_for(f"{name} Ready", lambda: fleet.condition(name, "Ready")["status"] == "True", 120)
    wait_for(f"{name} answering", lambda: fleet.infer(name) == 200)


def converged_on(fleet: Fleet, name: str, version: str, timeout: float = 120) -> None:
    """Only ``version`` in the status and on the pods, and the rollout finished."""

    def done() -> bool:
        st = fleet.status(name)
        progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
        loaded = set().union(*fleet.versions_loaded(name).values())
        return ([v["version"] for v in st["versions"]] == [version] and loaded == {version}
                and progressing["reason"] == "Converged")  # fmt: skip

    wait_for(f"{name} converged on version {version} alone", done, timeout)


def split(fleet: Fleet, name: str, n: int = SPLIT_REQUESTS) -> Counter[str]:
    """Versions answering ``n`` requests with distinct session keys (sticky hashing
    makes the draw repeatable); every request must succeed."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda i: fleet.call(name, {"X-ModelFleet-Session": f"user-{i}"}), range(n)))  # fmt: skip
    assert [r for r in results if r[0] != 200] == []
    return Counter(version for _, version in results)


def events(fleet: Fleet, name: str) -> list[tuple[str, str]]:
    items = fleet.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in items]


def delete(fleet: Fleet, *names: str) -> None:
    for name in names:
        fleet.k.kubectl("delete", "inferencemodel", name, "-n", NS)
    for name in names:
        wait_for(f"{name} unloaded", lambda n=name: not any(fleet.versions_loaded(n).values()))


def test_a_version_change_under_load_fails_no_request_and_unloads_the_old_one(
    fleet: Fleet,
) -> None:
    ready(fleet, "roll", replicas=2, memoryMB=100)
    with Stream(fleet, "roll") as stream:
        patch(fleet, "roll", {"version": "2", "source": V2})
        converged_on(fleet, "roll", "2")
        seen = len(stream.results)
        wait_for("answers after the switch", lambda: len(stream.results) > seen + 50)
    assert stream.failures() == [], stream.failures()[:5]
    versions = [v for _, _, v in stream.results]
    assert set(versions) == {"1", "2"}
    assert set(versions[seen:]) == {"2"}, "the old version answered after it was unloaded"
    reasons = [r for r, _ in events(fleet, "roll")]
    assert {"RolloutLoading", "TrafficSplit", "RolloutComplete"} <= set(reasons), reasons
    table = fleet.k.kubectl("get", "inferencemodels", "-n", NS).stdout
    assert "VERSION" in table and "roll" in table
    delete(fleet, "roll")


def test_a_canary_split_follows_its_weight_rolls_back_and_promotes_without_a_reload(
    fleet: Fleet,
) -> None:
    ready(fleet, "split", replicas=2, memoryMB=100)
    canary = {"version": "2", "source": V2, "weight": 25, "replicas": 1}
    patch(fleet, "split", {"canary": canary})

    def routed(weight: int) -> bool:
        versions = {v["version"]: v for v in fleet.status("split")["versions"]}
        canary = versions.get("2") or {}
        return bool(canary.get("readyReplicas") == 1 and canary.get("weight") == weight)

    wait_for("the canary ready at 25%", lambda: routed(25))
    share = split(fleet, "split")
    assert abs(100 * share["2"] / SPLIT_REQUESTS - 25) <= 2, share
    assert [fleet.call("split", {"X-ModelFleet-Session": "user-7"})[1] for _ in range(20)] == [
        split_version := fleet.call("split", {"X-ModelFleet-Session": "user-7"})[1]
    ] * 20, "a session key changed version"
    assert split_version in ("1", "2")

    patch(fleet, "split", {"canary": {**canary, "weight": 50}})
    wait_for("the canary at 50%", lambda: routed(50), timeout=30)
    share = split(fleet, "split")
    assert abs(100 * share["2"] / SPLIT_REQUESTS - 50) <= 2, share

    with Stream(fleet, "split") as stream:  # rollback
        patch(fleet, "split", {"canary": None})
        converged_on(fleet, "split", "1")
    assert stream.failures() == []
    assert split(fleet, "split", 200) == Counter({"1": 200})

    patch(fleet, "split", {"canary": canary})
    wait_for("the canary back at 25%", lambda: routed(25))
    loaded_at = {pod: m["loaded_at"] for pod in fleet.runtimes
                 for m in fleet.admin_state(pod)["models"] if m["version"] == "2"}  # fmt: skip
    assert len(loaded_at) == 1
    with Stream(fleet, "split") as stream:  # promotion: version and source to the canary's
        patch(fleet, "split", {"version": "2", "source": V2, "replicas": 1, "canary": None})
        converged_on(fleet, "split", "2")
    assert stream.failures() == []
    for pod, when in loaded_at.items():
        (v2,) = [m for m in fleet.admin_state(pod)["models"] if m["version"] == "2"]
        assert v2["loaded_at"] == when, "the promoted version was loaded again"
    delete(fleet, "split")


def test_a_broken_canary_gets_no_traffic_and_the_model_says_why(fleet: Fleet) -> None:
    ready(fleet, "steady", replicas=1, memoryMB=100)
    broken = {"path": "missing-v2.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
    with Stream(fleet, "steady") as stream:
        patch(fleet, "steady", {"canary": {"version": "2", "source": broken, "weight": 50}})
        degraded = wait_for(
            "Degraded",
            lambda: (c := fleet.condition("steady", "Degraded"))["status"] == "True" and c,
        )
        assert split(fleet, "steady", 400) == Counter({"1": 400})
    assert degraded["reason"] == "LoadFailed" and "missing-v2.safetensors" in degraded["message"]
    assert stream.failures() == [] and {v for _, _, v in stream.results} == {"1"}
    status = fleet.status("steady")
    canary = next(v for v in status["versions"] if v["version"] == "2")
    assert canary["role"] == "canary" and canary["readyReplicas"] == 0
    with Stream(fleet, "steady"):  # live figures are refreshed every REFRESH_S
        stable = wait_for("live figures in the status", lambda: "requestRate" in (
            v := fleet.status("steady")["versions"][0]) and v["requestRate"] > 0 and v, 60)  # fmt: skip
    assert stable["errorRate"] == 0 and 0 < stable["p99LatencyMs"] < 5000
    delete(fleet, "steady")


def test_an_operator_killed_at_each_step_of_a_rollout_finishes_it(fleet: Fleet) -> None:
    ready(fleet, "resume", replicas=2, memoryMB=100)
    with Stream(fleet, "resume") as stream:
        patch(fleet, "resume", {"version": "2", "source": V2})
        fleet.stop_operator()  # before any pass saw the edit
        fleet.start_operator()
        for step in ("RolloutLoading", "RolloutDraining"):
            wait_for(f"step {step} or later", lambda s=step: fleet.condition(
                "resume", "Progressing")["reason"] in (s, "RolloutDraining", "Converged"))  # fmt: skip
            fleet.stop_operator()
            fleet.start_operator()
        converged_on(fleet, "resume", "2")
    assert stream.failures() == [], stream.failures()[:5]
    delete(fleet, "resume")


def test_with_no_spare_memory_a_rollout_evicts_a_lower_priority_model_or_says_it_is_blocked(
    fleet: Fleet,
) -> None:
    # Each pod's budget is 1000 MB: big (450) and filler (450) fill it.
    ready(fleet, "big", replicas=2, memoryMB=450, priority=10)
    ready(fleet, "filler", replicas=2, memoryMB=450, priority=0)
    with Stream(fleet, "big") as stream:
        patch(fleet, "big", {"version": "2", "source": V2})
        converged_on(fleet, "big", "2")
    assert stream.failures() == []
    assert any(r == "Evicted" for r, _ in events(fleet, "filler"))
    wait_for("filler back", lambda: fleet.status("filler").get("readyReplicas") == 2, 120)

    delete(fleet, "filler")
    ready(fleet, "vip", replicas=2, memoryMB=450, priority=100)  # nothing lower to evict now
    patch(fleet, "big", {"version": "3", "source": V3})
    blocked = wait_for("RolloutBlocked", lambda: (c := fleet.condition(
        "big", "RolloutBlocked"))["status"] == "True" and c)  # fmt: skip
    assert (
        blocked["reason"] == "InsufficientMemory"
        and "version 2 keeps serving" in blocked["message"]
    )
    assert fleet.condition("big", "Ready")["status"] == "True"
    assert {fleet.call("big") for _ in range(20)} == {(200, "2")}
    assert any(r == "RolloutBlocked" for r, _ in events(fleet, "big"))
    delete(fleet, "big", "vip")
