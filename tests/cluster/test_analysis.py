"""Automated canary analysis on the real control plane, with real runtime and gateway
processes in the kwok pods (``fleet.py``): a good canary walks its steps to promoted
under a steady stream without a failed request or a reload; a canary whose model
always fails is rolled back by the operator at its first step."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import Fleet, Stream, model_yaml, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = "mf-analysis", "analysis"
V2 = {"path": "mlp-v2.safetensors", "architecture": "modelfleet.runtime.examples:mlp"}
BROKEN = {"path": "empty.safetensors", "architecture": "tests.runtime.models:broken"}
ANALYSIS = {"steps": [{"weight": 20, "minRequests": 20, "maxSeconds": 120},
                      {"weight": 50, "minRequests": 20, "maxSeconds": 120}]}  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    shutil.copy(model_store / "mlp.safetensors", model_store / "mlp-v2.safetensors")
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("analysis"), model_store, NS,
                       POOL) as f:  # fmt: skip
        yield f


def patch(fleet: Fleet, name: str, spec: dict[str, Any]) -> None:
    fleet.k.kubectl("patch", "inferencemodel", name, "-n", NS, "--type", "merge",
                    "-p", json.dumps({"spec": spec}))  # fmt: skip


def ready(fleet: Fleet, name: str, **spec: Any) -> None:
    fleet.apply(model_yaml(name, NS, POOL, **spec))
    wait_for(f"{name} Ready", lambda: fleet.condition(name, "Ready")["status"] == "True", 120)
    wait_for(f"{name} answering", lambda: fleet.infer(name) == 200)


def events(fleet: Fleet, name: str) -> list[tuple[str, str, str]]:
    items = fleet.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"], e["type"]) for e in items]


def analysis(fleet: Fleet, name: str) -> dict[str, Any]:
    return fleet.status(name).get("analysis") or {}


def delete(fleet: Fleet, name: str) -> None:
    fleet.k.kubectl("delete", "inferencemodel", name, "-n", NS)
    wait_for(f"{name} unloaded", lambda: not any(fleet.versions_loaded(name).values()))


def test_a_good_canary_walks_its_steps_to_promoted_without_a_failed_request_or_a_reload(
    fleet: Fleet,
) -> None:
    ready(fleet, "good", replicas=1, memoryMB=100)
    with Stream(fleet, "good") as stream:
        patch(fleet, "good", {"canary": {"version": "2", "source": V2, "replicas": 1,
                                         "analysis": ANALYSIS}})  # fmt: skip
        steps = set()

        def promoted() -> bool:
            spec = fleet.json("get", "inferencemodel", "good")["spec"]
            steps.add(analysis(fleet, "good").get("summary"))
            return bool(spec["version"] == "2" and "canary" not in spec)

        wait_for("the canary promoted by the operator", promoted, 120, interval=0.2)
        promoted_at = time.monotonic()
        loaded_at = {pod: m["loaded_at"] for pod in fleet.runtimes
                     for m in fleet.admin_state(pod)["models"]
                     if m["name"] == "good" and m["version"] == "2"}  # fmt: skip

        def converged() -> bool:
            st = fleet.status("good")
            return [v["version"] for v in st["versions"]] == ["2"]

        wait_for("version 2 alone", converged, 60)
        seen = len(stream.results)
        wait_for("answers after the promotion", lambda: len(stream.results) > seen + 50)
    first_canary = min(t for t, code, v in stream.results if v == "2")
    took = promoted_at - first_canary
    canary_n = sum(1 for t, _, v in stream.results if v == "2" and t <= promoted_at)
    rate = len([r for r in stream.results if first_canary <= r[0] <= promoted_at]) / took
    print(f"\nfirst canary request to promotion: {took:.1f} s at {rate:.0f} requests/s "
          f"({canary_n} canary requests); steps seen: {sorted(s for s in steps if s)}")  # fmt: skip
    assert stream.failures() == [], stream.failures()[:5]
    assert {v for _, _, v in stream.results} == {"1", "2"}
    assert analysis(fleet, "good")["phase"] == "Promoted"
    for pod, when in loaded_at.items():  # promotion reused the canary's copy
        (v2,) = [m for m in fleet.admin_state(pod)["models"]
                 if m["name"] == "good" and m["version"] == "2"]  # fmt: skip
        assert v2["loaded_at"] == when, "the promoted version was loaded again"
    reasons = [r for r, _, _ in events(fleet, "good")]
    assert reasons.count("AnalysisStep") == 2 and "AnalysisPromoted" in reasons, reasons
    assert "AnalysisFailed" not in reasons
    table = fleet.k.kubectl("get", "inferencemodels", "-n", NS).stdout
    assert "STEP" in table and "Promoted" in table, table
    delete(fleet, "good")


def test_a_failing_canary_is_rolled_back_by_the_operator_at_its_first_step(fleet: Fleet) -> None:
    ready(fleet, "bad", replicas=1, memoryMB=100, warmup={"enabled": False})
    with Stream(fleet, "bad") as stream:
        patch(fleet, "bad", {"canary": {"version": "2", "source": BROKEN, "replicas": 1,
                                        "analysis": ANALYSIS}})  # fmt: skip
        done = wait_for("rolled back", lambda: (a := analysis(fleet, "bad")).get("phase")
                        == "RolledBack" and a, 120, interval=0.2)  # fmt: skip
        rolled_back_at = time.monotonic()
        time.sleep(0.5)  # requests sent to the canary before the gateway took the routes
        settled = time.monotonic()
        time.sleep(3)
    failed = stream.failures()
    first_failure = min(t for t, _, _ in failed)
    during = [r for r in stream.results if first_failure <= r[0] <= rolled_back_at]
    share = len(failed) / len(during)
    print(f"\nthe failing canary answered {len(failed)} requests (all failed) before the "
          f"rollback: {100 * share:.0f}% of {len(during)} requests in "
          f"{rolled_back_at - first_failure:.1f} s; window: {done['canaryWindow']}")  # fmt: skip
    assert done["step"] == 1 and done["weight"] == 0
    assert done["reason"].startswith("AnalysisFailed: errorRate 100.0%"), done["reason"]
    assert done["canaryWindow"]["requests"] >= 20
    assert stream.failures(since=settled) == [], "the canary got requests after the rollback"
    assert len(failed) >= 20 and share <= 0.35, (len(failed), share)  # the step-1 share, 20%
    versions = {v["version"]: v for v in fleet.status("bad")["versions"]}
    assert versions["2"]["weight"] == 0 and versions["1"]["weight"] == 100
    warnings = [(r, m) for r, m, kind in events(fleet, "bad")
                if kind == "Warning" and r.startswith("Analysis")]  # fmt: skip
    assert [r for r, _ in warnings] == ["AnalysisFailed"], warnings
    # it stays rolled back: the canary gets nothing while its spec is unchanged
    time.sleep(3)
    assert analysis(fleet, "bad")["phase"] == "RolledBack"
    assert all(fleet.call("bad")[0] == 200 for _ in range(50))
    delete(fleet, "bad")


def test_a_shadow_gets_mirrored_requests_compared_in_status_and_answers_no_client(
    fleet: Fleet,
) -> None:
    """spec.shadow (the operator's part): placed with weight 0, in the routes' shadow
    once ready, the gateways' comparisons in status.shadow; removing it unloads it."""
    ready(fleet, "mirror", replicas=1, memoryMB=100)
    shadow = {"version": "3", "source": V2, "percent": 50}
    with Stream(fleet, "mirror") as stream:
        patch(fleet, "mirror", {"shadow": shadow})
        compared = wait_for("shadow comparisons in the status", lambda: (
            s := fleet.status("mirror").get("shadow") or {}).get("compared", 0) >= 50 and s, 90)  # fmt: skip
    print(f"\nstatus.shadow: {compared}")
    assert stream.failures() == [] and {v for _, _, v in stream.results} == {"1"}
    assert compared["version"] == "3" and compared["failed"] == 0
    # the same weights answer the same (up to float noise of other batch sizes)
    assert compared["agreement"] == 1 and compared["worstAbsDiff"] < 1e-4
    roles = {v["version"]: (v["role"], v["weight"]) for v in fleet.status("mirror")["versions"]}
    assert roles == {"1": ("stable", 100), "3": ("shadow", 0)}
    patch(fleet, "mirror", {"shadow": None})
    wait_for("the shadow unloaded", lambda: set().union(*fleet.versions_loaded("mirror").values())
             == {"1"}, 60)  # fmt: skip
    assert "shadow" not in fleet.status("mirror")
    delete(fleet, "mirror")
