"""Copies that follow the load, on the real control plane with the kwok pods'
runtime and gateway containers running (``fleet.py``): ``kubectl scale`` through the
scale subresource, and the built-in autoscaler scaling a model up under a
concurrent load and back down after its scale-down delay, failing no request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import Fleet, Stream, model_yaml, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = "mf-scale", "scale"
SCALE_UP_WITHIN_S = 45.0
DOWN_DELAY_S = 5


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("scale"), model_store, NS, POOL) as f:
        yield f


def ready(fleet: Fleet, name: str, **spec: Any) -> None:
    fleet.apply(model_yaml(name, NS, POOL, **spec))
    wait_for(f"{name} Ready", lambda: fleet.condition(name, "Ready")["status"] == "True", 120)
    wait_for(f"{name} answering", lambda: fleet.infer(name) == 200)


def hosting(fleet: Fleet, name: str) -> list[str]:
    """The pods whose runtime holds the model (any state)."""
    return sorted(pod for pod, versions in fleet.versions_loaded(name).items() if versions)


def events(fleet: Fleet, name: str) -> list[tuple[str, str]]:
    items = fleet.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["reason"], e["message"]) for e in items]


def delete(fleet: Fleet, name: str) -> None:
    fleet.k.kubectl("delete", "inferencemodel", name, "-n", NS)
    wait_for(f"{name} unloaded", lambda: not hosting(fleet, name))


def test_kubectl_scale_sets_the_copies_of_a_model_without_autoscaling(fleet: Fleet) -> None:
    ready(fleet, "fixed", replicas=1)
    fleet.k.kubectl("scale", "inferencemodel", "fixed", "-n", NS, "--replicas=2")
    wait_for("2 ready copies", lambda: fleet.status("fixed").get("readyReplicas") == 2, 60)
    assert hosting(fleet, "fixed") == sorted(fleet.runtimes)
    scale = fleet.json("get", "inferencemodel", "fixed", "--subresource=scale")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (2, 2)
    assert f"app.kubernetes.io/instance={POOL}" in scale["status"]["selector"]
    st = fleet.status("fixed")
    assert st["desiredReplicas"] == 2 and "autoscaling" not in st
    table = fleet.k.kubectl("get", "inferencemodels", "fixed", "-n", NS).stdout
    assert "DESIRED" in table.splitlines()[0]
    # and back to one: the copy leaves the routes, then its pod, under a light load
    with Stream(fleet, "fixed", threads=1, pause=0.05) as load:
        fleet.k.kubectl("scale", "inferencemodel", "fixed", "-n", NS, "--replicas=1")
        wait_for("1 copy left", lambda: len(hosting(fleet, "fixed")) == 1, 60)
        time.sleep(1)
    assert load.results and load.failures() == [], load.failures()[:5]
    assert fleet.status("fixed")["readyReplicas"] == 1
    delete(fleet, "fixed")


def test_the_autoscaler_adds_a_copy_under_load_and_removes_it_after_the_delay(
    fleet: Fleet,
) -> None:
    autoscaling = {"minReplicas": 1, "maxReplicas": 2, "targetInFlight": 1,
                   "scaleDownDelaySeconds": DOWN_DELAY_S}  # fmt: skip
    # A forward pass of ``slow_mlp`` takes 15 ms and holds at most two requests: eight
    # closed-loop clients keep several requests in flight at the runtime, far above the
    # target of one a copy even on a busy host (the fast ``mlp`` answers so quickly that
    # the requests spend most of their time in the clients and the gateway instead).
    slow = {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:slow_mlp"}
    ready(fleet, "hot", replicas=1, autoscaling=autoscaling, source=slow,
          batching={"maxBatchSize": 2, "maxQueueDelayMs": 1})  # fmt: skip
    assert len(hosting(fleet, "hot")) == 1 and fleet.status("hot")["desiredReplicas"] == 1
    timeline: list[tuple[float, int, int]] = []

    def copies(at_least: int | None = None, at_most: int | None = None) -> bool:
        st = fleet.status("hot")
        desired, ready_n = st.get("desiredReplicas", 0), st.get("readyReplicas", 0)
        timeline.append((time.monotonic(), desired, ready_n))
        if at_least is not None:
            return bool(ready_n >= at_least)
        return bool(desired <= (at_most or 0) and len(hosting(fleet, "hot")) <= (at_most or 0))

    with Stream(fleet, "hot", threads=8) as heavy:
        started = time.monotonic()
        try:
            wait_for("2 ready copies under load", lambda: copies(at_least=2), SCALE_UP_WITHIN_S)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; autoscaling status {fleet.status('hot').get('autoscaling')}"
                f"; {len(heavy.results)} requests, failures "
                f"{heavy.failures()[:3]}; timeline {timeline}"
            ) from None
        up_s = time.monotonic() - started
        time.sleep(3)  # the two copies share the load for a while
    heavy_done = time.monotonic()
    assert hosting(fleet, "hot") == sorted(fleet.runtimes)
    auto = fleet.status("hot")["autoscaling"]
    assert auto["desiredReplicas"] == 2 and auto["lastScaleTime"]
    with Stream(fleet, "hot", threads=1, pause=0.1) as light:
        wait_for("back to 1 copy", lambda: copies(at_most=1), 60)
        down_s = time.monotonic() - heavy_done
        time.sleep(2)  # answers after the copy left
    assert heavy.failures() == [], heavy.failures()[:5]
    assert light.results and light.failures() == [], light.failures()[:5]
    assert down_s >= DOWN_DELAY_S
    st = fleet.status("hot")
    assert st["readyReplicas"] == 1 and st["autoscaling"]["reason"] in ("ScaledDown", "Steady")
    reasons = [r for r, _ in events(fleet, "hot")]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons, reasons
    up = next(m for r, m in events(fleet, "hot") if r == "ScaledUp")
    assert "copies 1 -> 2" in up and "in flight" in up
    print(f"\nscale-up: {up_s:.1f} s from load start to 2 ready copies; scale-down: "
          f"{down_s:.1f} s from load drop to 1 copy (delay {DOWN_DELAY_S} s); "
          f"{len(heavy.results)} + {len(light.results)} requests, none failed")  # fmt: skip
    print(json.dumps([(round(t - started, 1), d, r) for t, d, r in timeline]))
    delete(fleet, "hot")
