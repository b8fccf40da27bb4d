"""Pods as a kubelet runs them (containers mode with ``tests/cluster/kubelet.py``):
the readinessProbe decides the pod's Ready condition in the API server, a crashed
runtime container is restarted per the pod's restartPolicy, and the operator shows
the restart in the InferencePool's status and a Warning event; the model answers
through the gateway container again afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import Fleet, model_yaml, running_fleet
from tests.containers.conftest import BUILD_TIMEOUT_S, example_models
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS, POOL = f"mf-kubelet-{os.getpid()}", "kubelet"


@pytest.fixture(scope="module")
def fleet(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    store = example_models(tmp_path_factory.mktemp("store"))
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("kubelet"), store, NS, POOL,
                       mode="containers", kubelet=True,
                       replicas={"min": 1, "max": 1}) as f:  # fmt: skip
        yield f


def pod_condition(fleet: Fleet, pod: str, kind: str) -> str:
    conditions = fleet.json("get", "pod", pod)["status"].get("conditions") or []
    return next((str(c["status"]) for c in conditions if c["type"] == kind), "absent")


def runtime_status(fleet: Fleet, pod: str) -> dict[str, Any]:
    statuses = fleet.json("get", "pod", pod)["status"].get("containerStatuses") or []
    return next(s for s in statuses if s["name"] == "runtime")


def pool_pod(fleet: Fleet, pod: str) -> dict[str, Any]:
    pods = (fleet.json("get", "inferencepool", POOL).get("status") or {}).get("pods") or []
    return next((p for p in pods if p["name"] == pod), {})


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)  # the images are built first if need be
def test_a_crashed_runtime_is_restarted_not_ready_meanwhile_and_shown_in_the_pool_status(
    fleet: Fleet,
) -> None:
    assert fleet.kubelet is not None
    fleet.apply(model_yaml("mlp", NS, POOL, replicas=1))
    wait_for("mlp Ready", lambda: fleet.condition("mlp", "Ready")["status"] == "True", 180)
    wait_for("mlp answering through the gateway", lambda: fleet.infer("mlp") == 200, 60)
    (pod,) = fleet.runtimes
    assert pod_condition(fleet, pod, "Ready") == "True"
    assert pool_pod(fleet, pod).get("restarts") == 0

    watched = fleet.kubelet.watched[pod]
    killed_at = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "KILL", watched.served.run.name],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    # The pod is not Ready while its runtime is down (the kubelet saw it exit) ...
    wait_for(f"{pod} not Ready", lambda: pod_condition(fleet, pod, "Ready") == "False", 30)
    # ... is restarted at once (restartPolicy Always, first restart without back-off),
    # and Ready again once its readinessProbe passes: the runtime loaded its models.
    wait_for(f"{pod} Ready again", lambda: pod_condition(fleet, pod, "Ready") == "True", 180)
    back_s = time.monotonic() - killed_at
    status = runtime_status(fleet, pod)
    assert status["restartCount"] == 1 and status["ready"] is True, status
    assert status["lastState"]["terminated"]["exitCode"] == 137, status
    events = [e for _, e in watched.history if _ >= killed_at]
    assert events[:2] == ["exited 137", "restarted"] and events[-1] == "ready", watched.history
    wait_for("mlp answering again", lambda: fleet.infer("mlp") == 200, 120)

    # The operator shows what happened: the pod's restarts and how it last ended ...
    def shown() -> dict[str, Any]:
        entry = pool_pod(fleet, pod)
        assert entry.get("restarts") == 1, entry
        return entry

    entry = wait_for("the restart in the pool's status", shown, 60)
    assert entry["lastTermination"]["exitCode"] == 137, entry
    assert entry["lastTermination"]["reason"] == "Error", entry
    # ... and a Warning event on the InferencePool, once.
    items = fleet.json("get", "events", "--field-selector",
                       f"involvedObject.name={POOL},reason=RuntimeRestarted")["items"]  # fmt: skip
    assert len(items) == 1 and items[0]["type"] == "Warning", items
    assert f"pod {pod}" in items[0]["message"] and "exit code 137" in items[0]["message"]
    assert fleet.kubelet.errors == [], fleet.kubelet.errors
    print(f"\n{pod}: killed, restarted and Ready again in {back_s:.1f} s; "
          f"event: {items[0]['message']}")  # fmt: skip


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_a_hung_runtime_fails_its_probes_and_is_killed_by_its_liveness_probe(
    fleet: Fleet,
) -> None:
    """The runtime's process is stopped (SIGSTOP: it holds its port, answers nothing).
    Its readinessProbe (every 2 s, 2 failures) takes the pod out of Ready; its
    livenessProbe (every 10 s, 3 failures) has the kubelet kill it, and it is restarted
    after the back-off of a second crash (10 s); the operator reports the second restart."""
    assert fleet.kubelet is not None
    wait_for("mlp answering", lambda: fleet.infer("mlp") == 200, 60)
    (pod,) = fleet.runtimes
    watched = fleet.kubelet.watched[pod]
    before = watched.restarts
    pid = subprocess.run(["podman", "container", "inspect", "--format", "{{.State.Pid}}",
                          watched.served.run.name], capture_output=True, text=True, check=True)  # fmt: skip
    hung_at = time.monotonic()
    os.kill(int(pid.stdout.strip()), signal.SIGSTOP)
    wait_for(f"{pod} not Ready", lambda: pod_condition(fleet, pod, "Ready") == "False", 30)
    not_ready_s = time.monotonic() - hung_at
    wait_for(f"{pod} Ready after the liveness kill and the restart",
             lambda: pod_condition(fleet, pod, "Ready") == "True", 150)  # fmt: skip
    events = [(round(t - hung_at, 1), e) for t, e in watched.history if t >= hung_at]
    names = [e for _, e in events]
    assert names[:4] == ["not-ready", "liveness-kill", "exited 137", "restarted"], events
    kill_s = next(t for t, e in events if e == "liveness-kill")
    restart_s = next(t for t, e in events if e == "restarted")
    # 3 failed liveness probes 10 s apart (the first up to 10 s after the stop) ...
    assert 20 <= kill_s <= 45, events
    # ... and the back-off of a second crash (10 s) before the restart.
    assert restart_s - kill_s >= 9.5, events
    assert runtime_status(fleet, pod)["restartCount"] == before + 1
    wait_for("mlp answering again", lambda: fleet.infer("mlp") == 200, 120)
    wait_for("the second restart in the pool's status",
             lambda: pool_pod(fleet, pod).get("restarts") == before + 1, 60)  # fmt: skip
    print(f"\n{pod}: not Ready {not_ready_s:.1f} s after it hung; events {events}")
