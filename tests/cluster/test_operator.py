"""The operator against the real control plane, with the kwok pods' runtime and gateway
containers run from the images (tests/cluster/fleet.py: or host processes, with
``MODELFLEET_CLUSTER_PODS=processes``), bound to each pod's loopback IP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import Fleet, running_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
NS = "mf-test"
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
).encode()


def model(name: str, priority: int = 0, replicas: int = 1, memory: int = 400, **extra: Any) -> str:
    spec = {
        "pool": "gpu", "priority": priority, "version": "1", "replicas": replicas, "memoryMB": memory,
        "source": {"path": "mlp.safetensors", "architecture": "modelfleet.runtime.examples:mlp"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        **extra,
    }  # fmt: skip
    return yaml.safe_dump({"apiVersion": "modelfleet.io/v1alpha1", "kind": "InferenceModel",
                           "metadata": {"name": name, "namespace": NS}, "spec": spec})  # fmt: skip


@pytest.fixture(scope="module")
def fleet(
    kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Fleet]:
    """The "gpu" pool (2 runtime pods, one GPU each) with its runtime and gateway pods
    running (their containers, or processes: tests/cluster/fleet.py), and the operator."""
    tmp = tmp_path_factory.mktemp("fleet")
    with running_fleet(kube_cluster, tmp, model_store, NS, "gpu", resources={"gpu": 1}) as fleet:
        yield fleet


def gateway(fleet: Fleet) -> str:
    assert fleet.gateway is not None
    return fleet.gateway.url


def gateway_grpc(fleet: Fleet) -> str:
    assert fleet.gateway is not None and fleet.gateway.grpc_address, "the gateway has no gRPC port"
    return fleet.gateway.grpc_address


def status(k: Cluster, name: str) -> dict[str, Any]:
    out = k.kubectl("get", "inferencemodel", name, "-n", NS, "-o", "json")
    return json.loads(out.stdout).get("status") or {}


def condition(k: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in status(k, name).get("conditions", []) if c["type"] == kind)


def ready(k: Cluster, name: str) -> bool:
    """True once the model is Ready; until then fails with its conditions (so a timeout
    says why, for example a model file the pod cannot see)."""
    conditions = status(k, name).get("conditions", [])
    ready = [c for c in conditions if c["type"] == "Ready" and c["status"] == "True"]
    assert ready, [(c["type"], c["status"], c.get("message", "")) for c in conditions]
    return True


def infer(gateway: str, name: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{gateway}/v2/models/{name}/infer", data=BODY)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_model_becomes_ready_and_answers_through_the_gateway(fleet: Fleet) -> None:
    k = fleet.k
    k.kubectl("apply", "-f", "-", input=model("alpha"))
    wait_for("alpha Ready", lambda: ready(k, "alpha"))
    _code, body = wait_for(
        "an answer", lambda: (r := infer(gateway(fleet), "alpha"))[0] == 200 and r
    )
    assert body["model_name"] == "alpha" and len(body["outputs"][0]["data"]) == 4
    st = status(k, "alpha")
    assert st["url"] == f"http://alpha.{NS}.svc/v2/models/alpha/infer"
    assert st["versions"][0]["role"] == "stable" and st["readyReplicas"] == 1
    svc = json.loads(k.kubectl("get", "service", "alpha", "-n", NS, "-o", "json").stdout)
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
    # The Service's gRPC port reaches the gateway's, which routes to the runtimes' gRPC.
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"http": (80, 8080), "grpc": (8001, 8001)}
    with triton_grpc.InferenceServerClient(gateway_grpc(fleet)) as client:
        x = triton_grpc.InferInput("input", [1, 16], "FP32")
        x.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))
        result = client.infer("alpha", [x])
        out = result.as_numpy("output")
        assert out is not None and out.shape == (1, 4)
        assert result.get_response().model_version == "1"
        assert np.allclose(out.reshape(-1), body["outputs"][0]["data"], rtol=1e-5)
    table = k.kubectl("get", "inferencemodels", "-n", NS).stdout
    assert "POOL" in table and "alpha" in table and "gpu" in table
    events = k.kubectl(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=alpha"
    ).stdout
    assert "Placed" in events and "version 1 (stable) placed on gpu-" in events


def test_a_high_priority_model_evicts_a_low_one_which_comes_back_after(
    fleet: Fleet,
) -> None:
    k = fleet.k
    k.kubectl("apply", "-f", "-", input=model("low", priority=0, replicas=2, memory=500))
    wait_for("low on 2 pods", lambda: status(k, "low").get("readyReplicas") == 2)
    k.kubectl("apply", "-f", "-", input=model("high", priority=100, replicas=2, memory=500))
    wait_for("high Ready", lambda: status(k, "high").get("readyReplicas") == 2, timeout=120)
    degraded = wait_for(
        "low Degraded", lambda: (c := condition(k, "low", "Degraded"))["status"] == "True" and c
    )
    assert "evicted by" in degraded["message"] and "high" in degraded["message"]
    assert infer(gateway(fleet), "high")[0] == 200
    k.kubectl("delete", "inferencemodel", "high", "-n", NS)
    wait_for("low back on 2 pods", lambda: status(k, "low").get("readyReplicas") == 2, timeout=120)
    assert infer(gateway(fleet), "low")[0] == 200


def test_bad_resources_are_rejected_or_degraded_while_others_keep_serving(
    fleet: Fleet,
) -> None:
    k = fleet.k
    bad = model("bad", canary={"version": "1", "weight": 10, "source": {"path": "x.safetensors"}})
    result = k.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0 and "canary.version must differ from version" in result.stderr
    broken = model("broken", memory=100).replace("mlp.safetensors", "missing.safetensors")
    k.kubectl("apply", "-f", "-", input=broken)
    degraded = wait_for(
        "broken Degraded",
        lambda: (c := condition(k, "broken", "Degraded"))["status"] == "True" and c,
    )
    assert "missing.safetensors" in degraded["message"] and "not found" in degraded["message"]
    assert infer(gateway(fleet), "alpha")[0] == 200
    k.kubectl("delete", "inferencemodel", "broken", "-n", NS)


def test_an_operator_restart_keeps_placements_and_traffic(fleet: Fleet) -> None:
    k = fleet.k
    before = {v["version"]: v["pods"] for v in status(k, "alpha")["versions"]}
    fleet.stop_operator()
    codes = [infer(gateway(fleet), "alpha")[0] for _ in range(20)]
    fleet.start_operator()
    time.sleep(6)
    codes += [infer(gateway(fleet), "alpha")[0] for _ in range(20)]
    after = {v["version"]: v["pods"] for v in status(k, "alpha")["versions"]}
    assert set(codes) == {200}
    assert before == after


def admin_models(ip: str, token: Path) -> list[str]:
    req = urllib.request.Request(f"http://{ip}:8081/admin/state",
                                 headers={"Authorization": f"Bearer {token.read_text()}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        return [m["name"] for m in json.loads(resp.read())["actual"]["models"]]


def test_two_pools_unknown_pool_deleting_a_model_and_a_pool(fleet: Fleet) -> None:
    k = fleet.k
    fleet.apply_pool(
        "small", replicas={"min": 1, "max": 1}, memoryBudgetMB=300, resources={"gpu": 1}
    )
    pods = wait_for("the small pool's pod", lambda: fleet.pods("runtime", "small"))
    token = fleet.pool_token("small")
    ip = pods[0]["status"]["podIP"]
    fleet.start_runtime(pods[0])
    k.kubectl(
        "apply",
        "-f",
        "-",
        input=model("tiny", priority=5, memory=200).replace("pool: gpu", "pool: small"),
    )
    k.kubectl(
        "apply",
        "-f",
        "-",
        input=model("huge", priority=1, memory=400).replace("pool: gpu", "pool: small"),
    )
    k.kubectl("apply", "-f", "-", input=model("orphan").replace("pool: gpu", "pool: nowhere"))
    wait_for("tiny ready in the small pool", lambda: status(k, "tiny").get("readyReplicas") == 1)
    assert "tiny" in admin_models(ip, token)
    huge = wait_for(
        "huge Degraded", lambda: (c := condition(k, "huge", "Degraded"))["status"] == "True" and c
    )
    assert "do not fit" in huge["message"] and "400 MB" in huge["message"]
    orphan = wait_for(
        "orphan Degraded",
        lambda: (c := condition(k, "orphan", "Degraded"))["status"] == "True" and c,
    )
    assert orphan["reason"] == "UnknownPool" and "nowhere" in orphan["message"]
    table = k.kubectl("get", "inferencemodels", "-n", NS).stdout
    assert all(name in table for name in ("tiny", "huge", "alpha", "small", "gpu"))
    assert infer(gateway(fleet), "alpha")[0] == 200  # the other pool keeps serving
    k.kubectl("delete", "inferencemodel", "tiny", "-n", NS)
    wait_for("tiny unloaded from the pod", lambda: "tiny" not in admin_models(ip, token))
    k.kubectl("delete", "inferencepool", "small", "-n", NS)
    wait_for("the small pool's children garbage-collected", lambda: k.kubectl(
        "get", "statefulsets,services,deployments,configmaps,poddisruptionbudgets", "-n", NS,
        "-l", "app.kubernetes.io/instance=small,app.kubernetes.io/component!=model", "-o", "name",
    ).stdout.strip() == "")  # fmt: skip
    for name in ("huge", "orphan"):
        k.kubectl("delete", "inferencemodel", name, "-n", NS, "--wait=false")


def test_a_bert_style_model_with_padding_serves_variable_lengths_through_the_gateway(
    fleet: Fleet,
) -> None:
    """An InferenceModel declaring bucket padding (``batching.pad``) for token ids
    and mask: the runtime gets it from the operator, and mixed-length traffic
    through the gateway is answered without an error, each at its own length."""
    import concurrent.futures

    import numpy as np

    k = fleet.k
    k.kubectl("apply", "-f", "-", input=model(
        "encoder", memory=200,
        source={"path": "bert.safetensors", "architecture": "modelfleet.runtime.zoo:bert"},
        inputs=[{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "mask", "datatype": "INT64", "shape": [-1, -1]}],
        outputs=[{"name": "pooled", "datatype": "FP32", "shape": [-1, 64]},
                 {"name": "tokens", "datatype": "FP32", "shape": [-1, -1, 64]}],
        batching={"maxBatchSize": 16, "maxQueueDelayMs": 5,
                  "pad": {"inputs": {"ids": 0, "mask": 0}, "buckets": [16, 32, 64, 128],
                          "outputs": ["tokens"]}},
    ))  # fmt: skip
    wait_for("encoder Ready", lambda: condition(k, "encoder", "Ready")["status"] == "True")
    lengths = [int(n) for n in np.random.default_rng(7).integers(1, 129, size=48)]

    def one(length: int) -> tuple[int, list[int]]:
        body = json.dumps({"inputs": [
            {"name": "ids", "shape": [1, length], "datatype": "INT64", "data": [3] * length},
            {"name": "mask", "shape": [1, length], "datatype": "INT64", "data": [1] * length},
        ]}).encode()  # fmt: skip
        req = urllib.request.Request(f"{gateway(fleet)}/v2/models/encoder/infer", data=body)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read())
                return resp.status, next(o for o in doc["outputs"] if o["name"] == "tokens")[
                    "shape"
                ]
        except urllib.error.HTTPError as exc:
            return exc.code, [exc.read().decode(errors="replace")]  # type: ignore[list-item]

    wait_for("a first answer", lambda: one(8)[0] == 200)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, lengths))
    assert [a for a in answers if a[0] != 200] == []
    assert [shape for _, shape in answers] == [[1, n, 64] for n in lengths]
    k.kubectl("delete", "inferencemodel", "encoder", "-n", NS)


def test_under_a_low_priority_surge_the_high_model_keeps_its_latency_and_status_shows_shedding(
    fleet: Fleet,
) -> None:
    """Two models of one pool, 50 ms a request each (a sleeping test model): a surge
    on the low-priority one through the gateway neither slows the high-priority one
    beyond one low batch nor sheds it, and the status says which one shed."""
    import concurrent.futures

    k, url = fleet.k, gateway(fleet)
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()

    def slow(name: str, priority: int, queue: int) -> str:
        return model(
            name, priority=priority, memory=50,
            source={"path": "empty.safetensors", "architecture": "tests.runtime.models:slow"},
            inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            outputs=[{"name": "doubled", "datatype": "FP32", "shape": [-1, 4]}],
            batching={"maxBatchSize": 1, "maxQueueDelayMs": 0},
            queue={"maxSize": queue, "timeoutMs": 10000},
        )  # fmt: skip

    def call(name: str) -> tuple[int, float]:
        req = urllib.request.Request(f"{url}/v2/models/{name}/infer", data=body)
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        return code, (time.perf_counter() - t0) * 1000

    k.kubectl("apply", "-f", "-", input=slow("surge", 0, 8))
    k.kubectl("apply", "-f", "-", input=slow("steady", 100, 64))
    for name in ("surge", "steady"):
        wait_for(f"{name} Ready", lambda n=name: condition(k, n, "Ready")["status"] == "True")
        wait_for(f"{name} answers", lambda n=name: call(n)[0] == 200)
    unloaded = sorted(call("steady")[1] for _ in range(10))
    stop = time.monotonic() + 14
    with concurrent.futures.ThreadPoolExecutor(17) as pool:

        def flood() -> list[int]:
            codes = []
            while time.monotonic() < stop:
                codes.append(call("surge")[0])
            return codes

        floods = [pool.submit(flood) for _ in range(16)]
        time.sleep(2)
        loaded = [call("steady") for _ in range(30)]
        surge_codes = [c for f in floods for c in f.result()]
    assert [c for c, _ in loaded] == [200] * 30
    worst = max(ms for _, ms in loaded)
    assert worst < 2 * unloaded[-1] + 50 + 150, (unloaded, sorted(ms for _, ms in loaded))
    assert surge_codes.count(503) > 0.3 * len(surge_codes), "the surge was not shed"

    def rates() -> tuple[float, float] | None:
        low, high = status(k, "surge")["versions"][0], status(k, "steady")["versions"][0]
        if "shedRate" not in low or "shedRate" not in high or low["shedRate"] == 0:
            return None
        return low["shedRate"], high["shedRate"]

    low_shed, high_shed = wait_for("shed rates in status", rates, timeout=60)
    assert low_shed > 0.3 and high_shed == 0
    for name in ("surge", "steady"):
        k.kubectl("delete", "inferencemodel", name, "-n", NS)
