"""The cluster tests' containers mode (``MODELFLEET_CLUSTER_PODS=containers``,
tests/cluster/fleet.py) fails a pod it cannot run, naming why: the operator's runtime
StatefulSet, broken one way per case, is applied to the test cluster and its pod is
started through ``Fleet.start_runtime`` as the cluster tests start theirs."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.operator.manifests import STATE_PATH, TOKEN_KEY, Owner, runtime_statefulset
from modelfleet.operator.reconcile import state_file
from modelfleet.operator.spec import PoolSpec
from tests.cluster.conftest import Cluster
from tests.cluster.fleet import BODY, CLAIM, STORE_CLAIM, Fleet, built_images
from tests.cluster.podman_pods import PodStartError
from tests.containers.conftest import BUILD_TIMEOUT_S, example_models, mlp
from tests.support.waiting import wait_for

NS = f"broken-{os.getpid()}"


def without_state_mount(container: dict[str, Any]) -> None:
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "state"]


def with_missing_image(container: dict[str, Any]) -> None:
    container["image"] = "modelfleet/runtime:no-such-tag"


def with_a_command_the_image_lacks(container: dict[str, Any]) -> None:
    container["command"] = ["modelfleet-serve", "--config", STATE_PATH]


def with_a_read_only_path_written_to(container: dict[str, Any]) -> None:
    container["command"] = ["sh", "-c", "echo x > /etc/modelfleet/scratch"]


CASES: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "nostate": (without_state_mount, ["exited with", STATE_PATH]),
    "noimage": (with_missing_image, ["modelfleet/runtime:no-such-tag", "is not in podman's image store"]),
    "nocmd": (with_a_command_the_image_lacks, ["podman run", "modelfleet-serve"]),
    "rofs": (with_a_read_only_path_written_to, ["exited with", "Read-only file system"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def namespace(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A namespace with the model store's claim bound; yields the store folder."""
    store = example_models(tmp_path_factory.mktemp("store"))
    kube_cluster.kubectl("create", "namespace", NS)
    try:
        kube_cluster.kubectl(
            "apply", "-f", "-", input=STORE_CLAIM.format(ns=NS, claim=CLAIM, store=store)
        )
        yield store
    finally:
        kube_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        kube_cluster.kubectl("delete", "pv", f"{NS}-{CLAIM}", "--wait=false", check=False)


def scheduled_pod(
    k: Cluster, store: Path, tmp: Path, pool: str, break_it: Callable[[dict[str, Any]], None]
) -> tuple[Fleet, dict[str, Any]]:
    """The operator's one-pod runtime StatefulSet for ``pool``, changed by ``break_it``,
    with its state ConfigMap and token Secret, applied; its pod once it has an IP."""
    image = built_images()
    spec = PoolSpec.model_validate({
        "replicas": {"min": 1, "max": 1}, "resources": {"cpu": "1", "memory": "2Gi"},
        "memoryBudgetMB": 1024, "image": image, "modelStore": {"claimName": CLAIM},
    })  # fmt: skip
    statefulset = runtime_statefulset(Owner("InferencePool", pool, NS, f"uid-{pool}"), spec)
    del statefulset["metadata"]["ownerReferences"]  # no InferencePool here to own it
    break_it(statefulset["spec"]["template"]["spec"]["containers"][0])
    token = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{pool}-admin-token"},
             "stringData": {TOKEN_KEY: "s3cret-s3cret-s3cret"}}  # fmt: skip
    state = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{pool}-state"},
             "data": {f"{pool}-0.yaml": state_file(spec, [mlp()])}}  # fmt: skip
    for manifest in (token, state, statefulset):
        k.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(manifest))
    fleet = Fleet(k, tmp, store, NS, pool, mode="containers")

    def scheduled() -> dict[str, Any]:
        pods = fleet.pods("runtime")
        assert pods, f"no {pool} pod with an IP yet"
        return pods[0]

    return fleet, wait_for(f"pod {pool}-0 scheduled with an IP", scheduled, timeout=120)


@pytest.mark.cluster
@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)  # the images are built first if need be
def test_a_runtime_container_serves_like_a_process_and_drains_on_stop(
    kube_cluster: Cluster, namespace: Path, tmp_path: Path
) -> None:
    fleet, pod = scheduled_pod(kube_cluster, namespace, tmp_path, "good", lambda c: None)
    try:
        served = fleet.start_runtime(pod)
        assert served.ready() and served.url == f"http://{pod['status']['podIP']}:8080"
        assert served.admin_url and served.grpc_address
        req = urllib.request.Request(f"{served.url}/v2/models/mlp/infer", data=BODY)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["outputs"][0]["shape"] == [1, 4]
        assert served.stop() == 0, served.log_tail()
        assert "draining" in served.log_tail() and not served.ready()
    finally:
        fleet.agent.remove_all()


@pytest.mark.cluster
@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)  # the images are built first if need be
@pytest.mark.parametrize("pool", list(CASES))
def test_a_broken_runtime_template_fails_the_container_start_naming_why(
    kube_cluster: Cluster, namespace: Path, tmp_path: Path, pool: str
) -> None:
    break_it, says = CASES[pool]
    fleet, pod = scheduled_pod(kube_cluster, namespace, tmp_path, pool, break_it)
    try:
        with pytest.raises(PodStartError) as failed:
            fleet.start_runtime(pod)
    finally:
        fleet.agent.remove_all()
    message = str(failed.value)
    print(message)  # the report shows what a user would read
    assert f"pod {pool}-0" in message, message
    for words in says:
        assert words in message, message
