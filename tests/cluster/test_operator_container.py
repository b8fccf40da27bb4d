"""The operator as `helm install` deploys it: its pod, as the API server holds it
(with the ServiceAccount token volume the API server added), run from the operator
image in podman with the chart's identity, in a namespace that enforces the
"restricted" Pod Security Standard. It reconciles a pool whose runtime and gateway
pods run from the runtime image, and a model that then answers through the gateway
container. Nothing of the operator runs from the clone's sources."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.fleet import CLAIM, STORE_CLAIM, Fleet, built_images, model_yaml, pool_yaml
from tests.cluster.podman_pods import PodmanAgent
from tests.containers.conftest import BUILD_TIMEOUT_S, OPERATOR_IMAGE, example_models
from tests.support.servers import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
NS, RELEASE, POOL = f"mf-opc-{os.getpid()}", "opc", "gpu"
OPERATOR = f"{RELEASE}-modelfleet-operator"


def helm(k: Cluster, home: Path, *args: str, check: bool = True) -> str:
    env = {**k.env, **{f"HELM_{kind}_HOME": str(home / kind.lower())
                       for kind in ("CACHE", "CONFIG", "DATA")}}  # fmt: skip
    done = subprocess.run([str(k.bin_dir / "helm"), *args], env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0 or not check, f"helm {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def api_server(k: Cluster) -> tuple[str, int]:
    config = yaml.safe_load(k.kubeconfig.read_text())
    url = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    assert url.hostname and url.port, url
    return url.hostname, url.port


@pytest.fixture(scope="module")
def installed(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    k, tmp = kube_cluster, tmp_path_factory.mktemp("opc")
    built_images()
    store = example_models(tmp / "store")
    k.kubectl("create", "namespace", NS)
    k.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted",
              "pod-security.kubernetes.io/enforce-version=v1.34")  # fmt: skip
    agent = PodmanAgent(k.kubectl, tmp / "pods", claims={CLAIM: store}, api_server=api_server(k))
    fleet = Fleet(k, tmp, store, NS, POOL, mode="containers")
    try:
        # The operator listens for metrics on the host's network: a port free here.
        helm(k, tmp, "install", RELEASE, str(ROOT / "charts" / "modelfleet"), "-n", NS,
             "--set", f"operator.metricsPort={free_port()}", "--wait", "--timeout", "90s")  # fmt: skip
        k.kubectl("apply", "-f", "-", input=STORE_CLAIM.format(ns=NS, claim=CLAIM, store=store))
        yield agent, fleet
    finally:
        for run in agent.started:
            print(f"--- {run.name} log tail:\n{agent.logs(run)[-4000:]}")
        agent.remove_all()
        for served in [*fleet.runtimes.values(), *([fleet.gateway] if fleet.gateway else [])]:
            served.stop()
        fleet.agent.remove_all()
        helm(k, tmp, "uninstall", RELEASE, "-n", NS, check=False)
        k.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        k.kubectl("delete", "pv", f"{NS}-{CLAIM}", "--wait=false", check=False)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)  # the images are built first if need be
def test_the_operator_container_reconciles_a_pool_and_its_model_answers_through_the_gateway(
    installed: Any,
) -> None:
    agent, fleet = installed
    selector = f"app.kubernetes.io/instance={RELEASE}"

    def operator_pod() -> dict[str, Any]:
        (pod,) = [p for p in fleet.json("get", "pods", "-l", selector)["items"]
                  if p["status"].get("podIP")]  # fmt: skip
        return pod  # type: ignore[no-any-return]

    pod = wait_for("the operator's pod scheduled with an IP", operator_pod, 60)
    container = pod["spec"]["containers"][0]
    assert container["image"] == OPERATOR_IMAGE.removeprefix("localhost/"), container["image"]
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    # The API server gave the pod its ServiceAccount's token volume, as in any cluster.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts, mounts
    run = agent.start(pod)  # the token from the API server, as the kubelet's TokenRequest

    fleet.apply(pool_yaml(POOL, NS, replicas={"min": 1, "max": 1},
                          modelStore={"claimName": CLAIM}))  # fmt: skip
    runtime = wait_for("the pool's runtime pod, created by the operator container",
                       lambda: fleet.pods("runtime"), 120)[0]  # fmt: skip
    gateway = wait_for("the pool's gateway pod", lambda: fleet.pods("gateway"), 60)[0]
    assert runtime["spec"]["containers"][0]["image"].startswith("modelfleet/runtime:")
    fleet.start_runtime(runtime)
    fleet.start_gateway(gateway)
    started = time.monotonic()
    fleet.apply(model_yaml("mlp", NS, POOL, replicas=1))
    wait_for("mlp Ready", lambda: fleet.condition("mlp", "Ready")["status"] == "True", 180)
    wait_for("mlp answering through the gateway container", lambda: fleet.infer("mlp") == 200, 60)
    print(f"\nmlp Ready and answering {time.monotonic() - started:.1f} s after it was applied")
    log = agent.logs(run)
    # A status 403, not the milliseconds of a log line's timestamp ("13:32:15,403 INFO").
    refused = re.findall(r".*(?:(?<![,.:\d])\b403\b|Forbidden|Not enough permissions).*", log)
    assert refused == [], "\n".join(refused[:5])
    assert "pushing 1 model version(s) to pod" in log, log[-3000:]
    status = subprocess.run(["podman", "container", "inspect", "--format", "{{.State.Status}}",
                             run.name], capture_output=True, text=True)  # fmt: skip
    assert status.stdout.strip() == "running", log[-3000:]
