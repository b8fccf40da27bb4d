"""Scale to zero and back, on the real control plane with the kwok pods' runtime
and gateway containers running (``fleet.py``): a ``minReplicas: 0`` model without
traffic for its scale-down delay is unloaded (its memory freed on the pod), reports
Ready=False/ScaledToZero and keeps its Service and its (cold) route; its next request
is held by the gateway while the operator places and warms a copy, then answered.
The cold-start time (request arrival to answer) is printed."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import BODY, Fleet, Stream, model_yaml, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = "mf-zero", "zero"
DOWN_DELAY_S = 3
DEADLINE_S = 60


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("zero"), model_store, NS, POOL) as f:
        yield f


def hosting(fleet: Fleet, name: str) -> list[str]:
    """The pods whose runtime holds the model (any state)."""
    return sorted(pod for pod, versions in fleet.versions_loaded(name).items() if versions)


def memory_in_use(fleet: Fleet) -> float:
    return sum(float(fleet.admin_state(pod)["memory_in_use_mb"]) for pod in fleet.runtimes)


def events(fleet: Fleet, name: str) -> list[tuple[str, str]]:
    items = fleet.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in items]


def held_call(fleet: Fleet, name: str, body: bytes = BODY) -> tuple[int, float, dict[str, Any]]:
    """One request through the gateway with a 60 s deadline: (status, seconds, body)."""
    assert fleet.gateway is not None
    req = urllib.request.Request(
        f"{fleet.gateway.url}/v2/models/{name}/infer", data=body,
        headers={"X-ModelFleet-Timeout-Us": str(DEADLINE_S * 1_000_000)},
    )  # fmt: skip
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=DEADLINE_S + 10) as resp:
        body = json.loads(resp.read())
        return int(resp.status), time.monotonic() - started, body


def model_memory(fleet: Fleet, name: str) -> float:
    """The memory the runtimes report for the model's copies (MB)."""
    return sum(float(m["memory_mb"]) for pod in fleet.runtimes
               for m in fleet.admin_state(pod)["models"] if m["name"] == name)  # fmt: skip


def scale_to_zero(fleet: Fleet, name: str, body: bytes = BODY) -> tuple[float, float]:
    """A short load, then no traffic until the model is at zero: (seconds from the last
    request to unloaded, MB the runtimes freed)."""
    with Stream(fleet, name, threads=1, pause=0.05, body=body) as load:
        time.sleep(2)
    stopped = time.monotonic()
    assert load.results and load.failures() == [], load.failures()[:5]
    loaded_mb, model_mb = memory_in_use(fleet), model_memory(fleet, name)
    assert model_mb > 0

    def at_zero() -> bool:
        ready = fleet.condition(name, "Ready")
        return ready["reason"] == "ScaledToZero" and not hosting(fleet, name)

    wait_for("scaled to zero", at_zero, 60)
    zero_s = time.monotonic() - stopped
    freed_mb = loaded_mb - memory_in_use(fleet)
    assert freed_mb >= model_mb * 0.9, (loaded_mb, freed_mb, model_mb)
    assert zero_s >= DOWN_DELAY_S
    return zero_s, freed_mb


def test_a_model_scales_to_zero_and_its_next_request_is_held_and_answered(
    fleet: Fleet,
) -> None:
    autoscaling = {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1,
                   "scaleDownDelaySeconds": DOWN_DELAY_S}  # fmt: skip
    fleet.apply(model_yaml("idle", NS, POOL, replicas=1, autoscaling=autoscaling,
                           queue={"timeoutMs": DEADLINE_S * 1000}))  # fmt: skip
    wait_for("idle Ready", lambda: fleet.condition("idle", "Ready")["status"] == "True", 120)
    wait_for("idle answering", lambda: fleet.infer("idle") == 200)
    rounds = []
    for _ in range(2):
        zero_s, freed_mb = scale_to_zero(fleet, "idle")
        st = fleet.status("idle")
        assert fleet.condition("idle", "Ready")["status"] == "False"
        assert fleet.condition("idle", "Degraded")["status"] == "False"
        assert st["desiredReplicas"] == 0 and st["readyReplicas"] == 0
        assert st["autoscaling"]["reason"] == "ScaledToZero"
        route = fleet.config("routes", "routes.yaml")["models"]["idle"]
        assert route["cold"] is True and all(not v.get("endpoints") for v in route["versions"])
        assert fleet.json("get", "service", "idle")["metadata"]["name"] == "idle"
        assert "ScaledToZero" in [r for r, _ in events(fleet, "idle")]

        status, cold_s, body = held_call(fleet, "idle")  # held by the gateway, then served
        assert status == 200 and body["model_version"] == "1", body
        assert len(hosting(fleet, "idle")) == 1
        wait_for("Ready again", lambda: fleet.condition("idle", "Ready")["status"] == "True", 30)
        rounds.append((zero_s, freed_mb, cold_s))
    up = [m for r, m in events(fleet, "idle") if r == "ScaledUp"]
    assert any("from zero" in m and "waiting at the gateway" in m for m in up), up
    for zero_s, freed_mb, cold_s in rounds:
        print(f"\nscale to zero: {zero_s:.1f} s from the last request to unloaded (delay "
              f"{DOWN_DELAY_S} s), {freed_mb:.3f} MB freed on the pod; cold start: "
              f"{cold_s:.2f} s from request arrival to answer (example MLP)")  # fmt: skip


CNN_BODY = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.5] * 784}]}).encode()  # fmt: skip


def test_the_example_cnn_cold_starts_from_zero_too(fleet: Fleet) -> None:
    """The other example model: a small CNN (28x28 images), its cold start measured."""
    autoscaling = {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1,
                   "scaleDownDelaySeconds": DOWN_DELAY_S}  # fmt: skip
    fleet.apply(model_yaml(
        "cnn", NS, POOL, replicas=1, autoscaling=autoscaling, memoryMB=300,
        queue={"timeoutMs": DEADLINE_S * 1000},
        source={"path": "cnn.safetensors", "architecture": "modelfleet.runtime.examples:cnn"},
        inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    ))  # fmt: skip
    wait_for("cnn Ready", lambda: fleet.condition("cnn", "Ready")["status"] == "True", 120)
    zero_s, freed_mb = scale_to_zero(fleet, "cnn", CNN_BODY)
    status, cold_s, body = held_call(fleet, "cnn", CNN_BODY)
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10], body
    print(f"\nscale to zero: {zero_s:.1f} s from the last request to unloaded, "
          f"{freed_mb:.3f} MB freed; cold start: {cold_s:.2f} s from request arrival to "
          "answer (example CNN)")  # fmt: skip
