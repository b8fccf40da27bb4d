"""A runtime container's restarts, from the kubelet's pod status to the pool's
status and its Warning events."""

from __future__ import annotations

import dataclasses

from modelfleet.operator.desired import plan
from modelfleet.operator.restarts import Restarts, restart_messages
from modelfleet.operator.status import pool_status
from tests.operator.builders import model, pod, pool
from tests.operator.test_crds import declared, schema

T0 = "2026-01-01T00:00:00Z"
KILLED = {
    "containerStatuses": [
        {"name": "gateway-sidecar", "restartCount": 9},
        {
            "name": "runtime", "restartCount": 2, "ready": True,
            "state": {"running": {"startedAt": T0}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                         "finishedAt": "2026-01-01T00:00:05Z"}},
        },
    ]
}  # fmt: skip


def test_the_runtime_container_is_read_by_name_with_its_last_termination() -> None:
    seen = Restarts.of(KILLED)
    assert seen == Restarts(2, "OOMKilled", 137, "2026-01-01T00:00:05Z")
    assert seen.status() == {
        "restarts": 2,
        "lastTermination": {"reason": "OOMKilled", "exitCode": 137,
                            "finishedAt": "2026-01-01T00:00:05Z"},
    }  # fmt: skip
    # The pod index keeps a compact form that reads back to the same thing.
    assert Restarts.from_index(seen.as_index()) == seen


def test_a_pod_without_container_statuses_or_restarts_shows_zero_and_no_termination() -> None:
    assert Restarts.of({}).status() == {"restarts": 0}
    assert (
        Restarts.of({"containerStatuses": [{"name": "runtime", "restartCount": 0}]}) == Restarts()
    )
    assert Restarts.from_index(None) == Restarts()
    # A container named otherwise (an older template) is read as the first one.
    assert Restarts.of({"containerStatuses": [{"name": "main", "restartCount": 1}]}).count == 1


def test_the_pool_status_lists_each_pods_restarts() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
            pod("gpu-1", "127.1.0.3", {("mlp", "1"): "ready"})]  # fmt: skip
    pods[1] = dataclasses.replace(pods[1], restarts=Restarts.of(KILLED))
    report = plan(pool(), {"mlp": model(replicas=2)}, pods).reports
    st = pool_status(pods, [], report, {}, 1, T0)
    by_name = {p["name"]: p for p in st["pods"]}
    assert by_name["gpu-0"]["restarts"] == 0 and "lastTermination" not in by_name["gpu-0"]
    assert by_name["gpu-1"]["restarts"] == 2
    assert by_name["gpu-1"]["lastTermination"]["reason"] == "OOMKilled"
    # Every field is one the CRD declares (the API server would prune the others).
    assert declared(schema("inferencepool.yaml")["properties"]["status"], st, "status") == []


def test_a_restart_is_reported_once_and_never_for_a_pod_the_last_status_did_not_list() -> None:
    previous = [{"name": "gpu-0", "restarts": 1}, {"name": "gpu-1", "restarts": 0}]
    now = {"gpu-0": Restarts(1), "gpu-1": Restarts.of(KILLED), "gpu-2": Restarts(5, "Error", 1)}
    messages = restart_messages(previous, now)
    assert len(messages) == 1
    assert messages[0].startswith("pod gpu-1: its runtime container restarted 2 times (2 in all)")
    assert "OOMKilled, exit code 137" in messages[0]
    # The next pass compares with the status it wrote: nothing new, nothing said.
    assert restart_messages([{"name": n, "restarts": r.count} for n, r in now.items()], now) == []
