"""Proof that the test cluster is a real Kubernetes: CRDs, scheduling, GC, preemption."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.modelfleet.io}
spec:
  group: test.modelfleet.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
"""


def test_a_crd_is_served_round_trips_and_rejects_invalid_objects(kube_cluster: Cluster) -> None:
    kube_cluster.kubectl("apply", "-f", "-", input=CRD)
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.modelfleet.io", "--timeout=30s"
    )
    good = "apiVersion: test.modelfleet.io/v1\nkind: Widget\nmetadata: {name: w1, namespace: default}\nspec: {size: 3}\n"
    wait_for("the widget to be accepted",
             lambda: kube_cluster.kubectl("apply", "-f", "-", input=good, check=False).returncode == 0)  # fmt: skip
    got = json.loads(kube_cluster.kubectl("get", "widget", "w1", "-o", "json").stdout)
    assert got["spec"] == {"size": 3}
    bad = good.replace("name: w1", "name: w2").replace("size: 3", "size: 99")
    result = kube_cluster.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.size" in result.stderr and "less than or equal to 10" in result.stderr


def test_deployment_pods_land_on_gpu_nodes_get_loopback_ips_and_are_garbage_collected(
    kube_cluster: Cluster,
) -> None:
    deployment = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: gpu-app, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: gpu-app}}
  template:
    metadata: {labels: {app: gpu-app}}
    spec:
      containers:
        - name: main
          image: example.invalid/app:1
          resources: {limits: {nvidia.com/gpu: 1}}
"""
    kube_cluster.kubectl("apply", "-f", "-", input=deployment)

    def ready_pods() -> list[dict[str, Any]]:
        pods = json.loads(
            kube_cluster.kubectl("get", "pods", "-l", "app=gpu-app", "-o", "json").stdout
        )["items"]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions", []))]  # fmt: skip
        return ready if len(ready) == 3 else []

    pods = wait_for("3 ready pods", ready_pods)
    network = ipaddress.ip_network(kube_cluster.pod_ip_range)
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        assert ipaddress.ip_address(pod["status"]["podIP"]) in network
    kube_cluster.kubectl("delete", "deployment", "gpu-app", "--wait=true")
    wait_for("the pods to be garbage-collected", lambda: kube_cluster.kubectl(
        "get", "pods", "-l", "app=gpu-app", "-o", "name").stdout.strip() == "")  # fmt: skip


def test_a_higher_priority_pod_preempts_a_lower_one_when_gpus_run_out(
    kube_cluster: Cluster,
) -> None:
    classes = """
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: test-low}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: test-high}
value: 100000
"""
    kube_cluster.kubectl("apply", "-f", "-", input=classes)
    nodes = json.loads(kube_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes)

    def pod(name: str, cls: str, gpus: int) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "namespace": "default", "labels": {"test": "preempt"}},
                           "spec": {"priorityClassName": cls, "terminationGracePeriodSeconds": 0,
                                    "containers": [{"name": "c", "image": "example.invalid/x:1",
                                                    "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}})  # fmt: skip

    per_node = total // len(nodes)
    for i in range(len(nodes)):  # fill every GPU with low-priority pods
        kube_cluster.kubectl("apply", "-f", "-", input=pod(f"low-{i}", "test-low", per_node))
    wait_for("the low pods to run", lambda: kube_cluster.kubectl(
        "get", "pods", "-l", "test=preempt", "--field-selector=status.phase=Running", "-o", "name"
    ).stdout.count("pod/") == len(nodes))  # fmt: skip
    kube_cluster.kubectl("apply", "-f", "-", input=pod("high", "test-high", per_node))

    def high_running() -> bool:
        out = json.loads(kube_cluster.kubectl("get", "pod", "high", "-o", "json").stdout)
        return bool(out["status"].get("phase") == "Running")

    wait_for("the high-priority pod to run", high_running, timeout=90)
    lows = kube_cluster.kubectl("get", "pods", "-o", "name").stdout.count("pod/low-")
    assert lows == len(nodes) - 1, "exactly one low-priority pod must have been preempted"
    kube_cluster.kubectl("delete", "pods", "-l", "test=preempt", "--wait=false")


def test_service_account_tokens_work_and_the_version_is_real(kube_cluster: Cluster) -> None:
    kube_cluster.kubectl("create", "serviceaccount", "probe", "-n", "default", check=False)
    token = kube_cluster.kubectl("create", "token", "probe", "-n", "default").stdout.strip()
    server = kube_cluster.kubectl(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    ).stdout
    ca = kube_cluster.kubectl("config", "view", "--minify", "--raw", "-o",
                              "jsonpath={.clusters[0].cluster.certificate-authority}").stdout  # fmt: skip
    whoami = kube_cluster.kubectl("--kubeconfig=/dev/null", f"--server={server}", f"--token={token}",
                                  f"--certificate-authority={ca}", "auth", "whoami", "-o", "json")  # fmt: skip
    assert (
        json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        == "system:serviceaccount:default:probe"
    )
    version = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.34.")
