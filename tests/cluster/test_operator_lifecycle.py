"""The operator's contracts as a cluster user sees them: `kubectl explain` and the
API server's refusals name the field; each runtime pod starts from its durable
document (the ConfigMap entry it mounts) exactly as a kubelet would give it;
a runtime restarted while the operator is down serves again from that document;
events and conditions say what happened. (Processes in kwok pods: ``fleet.py``.)
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import BODY, Fleet, running_fleet
from tests.cluster.fleet import model_yaml as fleet_model_yaml
from tests.cluster.fleet import pool_yaml as fleet_pool_yaml
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS = "mf-life"
POOL = "life"


SEQUENCE: dict[str, Any] = {
    "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
               {"name": "lang", "datatype": "BYTES", "shape": [-1, 1]}],
    "outputs": [{"name": "states", "datatype": "FP32", "shape": [-1, -1, 8]},
                {"name": "label", "datatype": "BYTES", "shape": [-1, 1]}],
}  # fmt: skip
"""A sequence model's tensors (a BYTES input and output beside the padded ones)."""


def model_yaml(name: str, pool: str = POOL, **spec: Any) -> str:
    return fleet_model_yaml(name, NS, pool, **spec)


def pool_yaml(name: str = POOL, **spec: Any) -> str:
    return fleet_pool_yaml(name, NS, **spec)


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    with running_fleet(kube_cluster, tmp_path_factory.mktemp("life"), model_store, NS, POOL) as f:
        yield f


def test_kubectl_explain_describes_the_fields(fleet: Fleet) -> None:
    out = fleet.k.kubectl("explain", "inferencemodel.spec.canary.weight").stdout
    assert "Percent (0-100) of the model's traffic sent to the canary" in out
    out = fleet.k.kubectl("explain", "inferencepool.spec.memoryBudgetMB").stdout
    assert "Placement never exceeds it" in " ".join(out.split())
    out = fleet.k.kubectl("explain", "inferencemodel.status.conditions").stdout
    assert "Ready, Placed, Degraded, Progressing" in " ".join(out.split())
    out = fleet.k.kubectl("explain", "inferencemodel.spec.batching.pad.buckets").stdout
    assert "a request longer than the largest bucket is refused with 400" in " ".join(out.split())


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        (model_yaml("w", canary={"version": "2", "weight": 120, "source": {"path": "b.pt2"}}),
         "spec.canary.weight", "less than or equal to 100"),
        (model_yaml("b", batching={"maxBatchSize": 0}), "spec.batching.maxBatchSize", "greater than or equal to 1"),
        (model_yaml("c", canary={"version": "1", "source": {"path": "b.pt2"}}),
         "spec.canary.version", "canary.version must differ from version"),
        (model_yaml("t", source={"path": "m.ts", "format": "torchscript"}),
         "spec.source.trusted", "set source.trusted: true"),
        (model_yaml("u", source={"url": "https://example.com/m.pt2"}), "spec.source.sha256", "source.url needs source.sha256"),
        (model_yaml("a", source={"path": "m.safetensors"}), "spec.source.architecture", "architecture"),
        (model_yaml("9lives"), "metadata.name", "DNS label that starts with a letter"),
        (pool_yaml("p", replicas={"min": 3, "max": 2}), "spec.replicas.min", "replicas.min must not exceed replicas.max"),
        (model_yaml("pb", **SEQUENCE, batching={"pad": {"inputs": {"ids": 0}, "buckets": [64, 32]}}),
         "spec.batching.pad.buckets", "must be strictly increasing"),
        (model_yaml("pd", **SEQUENCE, batching={"pad": {"inputs": {"ids": 0}, "buckets": [32, 32]}}),
         "spec.batching.pad.buckets", "must be strictly increasing"),
        (model_yaml("pa", **SEQUENCE, batching={"pad": {"inputs": {"ids": 0}, "axis": 0, "buckets": [32]}}),
         "spec.batching.pad.axis", "greater than or equal to 1"),
        (model_yaml("pe", **SEQUENCE, batching={"pad": {"inputs": {}, "buckets": [32]}}),
         "spec.batching.pad.inputs", "at least 1 propert"),
        (model_yaml("pf", batching={"pad": {"inputs": {"input": 0}, "buckets": [32]}}),
         "spec.batching.pad.inputs", "variable (-1)"),
        (model_yaml("ps", **SEQUENCE, batching={"pad": {"inputs": {"lang": 0}, "buckets": [32]}}),
         "spec.batching.pad.inputs", "not BYTES ones"),
        (model_yaml("po", **SEQUENCE, batching={"pad": {"inputs": {"ids": 0}, "buckets": [32], "outputs": ["label"]}}),
         "spec.batching.pad.outputs", "variable (-1)"),
    ],
    ids=["weight", "batch", "canary-version", "torchscript", "url-sha", "architecture", "name", "min-max",
         "pad-decreasing", "pad-duplicate", "pad-axis-0", "pad-no-inputs", "pad-fixed-dim", "pad-bytes",
         "pad-output"],
)  # fmt: skip
def test_apply_of_a_bad_resource_is_refused_with_the_field_named(
    fleet: Fleet, bad: str, field: str, says: str
) -> None:
    result = fleet.k.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0, f"accepted: {bad}"
    assert field in result.stderr and says in result.stderr, result.stderr


def test_a_model_is_placed_with_events_and_answers_through_the_gateway(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("alpha", replicas=2, priority=10))
    wait_for(
        "alpha Ready", lambda: fleet.condition("alpha", "Ready")["status"] == "True", timeout=120
    )
    assert wait_for("an answer", lambda: fleet.infer("alpha") == 200)
    status = fleet.status("alpha")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("True", "AllReplicasReady"), "Placed": ("True", "Placed"),
                          "Degraded": ("False", "AsExpected"), "Progressing": ("False", "Converged"),
                          "RolloutBlocked": ("False", "NotBlocked"),
                          "MemoryOverDeclared": ("False", "NotMeasured")}  # fmt: skip
    assert sorted(status["versions"][0]["pods"]) == sorted(fleet.runtimes)
    assert status["observedGeneration"] == 1
    events = fleet.json("get", "events", "--field-selector", "involvedObject.name=alpha")["items"]
    placed = [e["message"] for e in events if e["reason"] == "Placed"]
    assert len(placed) == 2 and all("version 1 (stable) placed on life-" in m for m in placed)
    pool = fleet.json("get", "inferencepool", POOL)["status"]
    assert pool["readyReplicas"] == 2 and pool["models"] == 1
    table = fleet.k.kubectl("get", "ipool", "-n", NS).stdout
    assert "MODELS" in table and POOL in table


def test_a_runtime_restarted_while_the_operator_is_down_serves_from_its_config_map(
    fleet: Fleet,
) -> None:
    pod = sorted(fleet.runtimes)[0]
    fleet.stop_operator()
    try:
        fleet.runtimes[pod].stop()
        runtime_pod = next(p for p in fleet.pods("runtime") if p["metadata"]["name"] == pod)
        fleet.start_runtime(runtime_pod)  # the document it mounts already lists alpha
        assert "alpha:ready" in fleet.hosted(pod)
        ip = fleet.runtimes[pod].host
        req = urllib.request.Request(
            f"http://{ip}:{fleet.runtimes[pod].port}/v2/models/alpha/infer", data=BODY
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        fleet.start_operator()
    assert wait_for(
        "alpha still Ready", lambda: fleet.condition("alpha", "Ready")["status"] == "True"
    )
    assert fleet.infer("alpha") == 200


def test_a_model_too_big_for_any_pod_is_degraded_while_others_serve(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("giant", memoryMB=4000))
    degraded = wait_for("giant Degraded",
                        lambda: (c := fleet.condition("giant", "Degraded"))["status"] == "True" and c)  # fmt: skip
    assert degraded["reason"] == "DoesNotFit" and "4000 MB" in degraded["message"]
    assert fleet.condition("giant", "Placed")["status"] == "False"
    assert fleet.infer("alpha") == 200
    fleet.k.kubectl("delete", "inferencemodel", "giant", "-n", NS)


def test_deleting_a_model_unloads_it_everywhere_and_removes_its_route(fleet: Fleet) -> None:
    fleet.k.kubectl("apply", "-f", "-", input=model_yaml("beta", replicas=2))
    wait_for(
        "beta Ready", lambda: fleet.condition("beta", "Ready")["status"] == "True", timeout=120
    )
    fleet.k.kubectl("delete", "inferencemodel", "beta", "-n", NS)
    for pod in fleet.runtimes:
        wait_for(
            f"beta unloaded from {pod}",
            lambda pod=pod: not any(m.startswith("beta:") for m in fleet.hosted(pod)),
        )
    wait_for("beta's route gone", lambda: fleet.infer("beta") == 404)
    documents = [fleet.config("state", f"{pod}.yaml") for pod in fleet.runtimes]
    assert all("beta" not in [m["name"] for m in d["models"]] for d in documents)
    assert fleet.infer("alpha") == 200
