"""``make bench-operator``: what the operator costs the API server.

On the test control plane (``tests/cluster``: etcd, kube-apiserver, controller
manager, scheduler, kwok nodes), with the operator run as in the cluster tests
(``python -m modelfleet operator``) and a real runtime process for every runtime
pod, it applies ``--pools`` pools of one runtime pod and ``--models`` small models
spread evenly over them, and measures:

* **time to Ready**: from applying the resources to every InferenceModel showing
  the ``Ready`` condition True (pods, runtime start-up and loads included), and the
  part of it after the last runtime process answered (runtime start-up, which the
  host's load dominates, left out);
* **steady-state API requests per second made by the operator**: with everything
  converged, the requests the API server's audit log records from the operator's
  two clients (kopf's watches, user agent ``kopf/...``, and its own client,
  aiohttp's ``Python/... aiohttp/...``) over ``--window`` seconds, by verb and
  resource; beside them, every client's requests (the controller manager,
  scheduler and kwok make theirs). A long-running WATCH counts once, when opened.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import Cluster
from tests.cluster.controlplane import ControlPlane, build_binaries
from tests.cluster.fleet import ROOT, Fleet, model_yaml, pool_yaml
from tests.support.servers import example_models_dir
from tests.support.waiting import wait_for

NS = "bench"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""
OPERATOR_AGENTS = ("kopf/", "Python/")
"""User agents of the operator's clients: kopf's watches and its aiohttp client."""


def audit_counts(log: Path, start: int, end: int) -> tuple[Counter[str], Counter[str]]:
    """Requests recorded between two byte offsets of the audit log: the operator's
    by "verb resource[/subresource] (code)", and every client's by user agent."""
    operator: Counter[str] = Counter()
    agents: Counter[str] = Counter()
    with log.open("rb") as f:
        f.seek(start)
        chunk = f.read(end - start)
    for line in chunk.splitlines():
        event = json.loads(line)
        agent = str(event.get("userAgent", "")).split(" ")[0]
        agents[agent.split("/")[0]] += 1
        if agent.startswith(OPERATOR_AGENTS):
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?"))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            code = (event.get("responseStatus") or {}).get("code", "")
            operator[f"{event.get('verb')} {resource} ({code})"] += 1
    return operator, agents


def ready_count(k: Cluster) -> int:
    items = json.loads(k.kubectl("get", "inferencemodels", "-n", NS, "-o", "json").stdout)["items"]
    return sum(
        any(c["type"] == "Ready" and c["status"] == "True" for c in
            (m.get("status") or {}).get("conditions", []))
        for m in items
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=5)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds per measured window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after Ready")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()

    print("==> building / finding the control plane's binaries", flush=True)
    bin_dir = build_binaries()
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-opbench-"))
    (tmp / "audit-policy.yaml").write_text(AUDIT_POLICY)
    audit = tmp / "audit.log"
    plane = ControlPlane(bin_dir, apiserver_args=(
        f"--audit-policy-file={tmp / 'audit-policy.yaml'}", f"--audit-log-path={audit}",
        "--audit-log-mode=blocking", "--audit-log-maxsize=0"))  # fmt: skip
    fleets: list[Fleet] = []
    try:
        print("==> starting the control plane", flush=True)
        plane.start()
        k = Cluster(plane.kubeconfig, bin_dir, plane.pod_ip_range, own=plane)
        store = example_models_dir(tmp / "store")
        for crd in ("inferencepool.yaml", "inferencemodel.yaml"):
            k.kubectl("apply", "-f", str(ROOT / "crds" / crd))
        for crd in ("inferencepools", "inferencemodels"):
            k.kubectl("wait", "--for=condition=Established", f"crd/{crd}.modelfleet.io",
                      "--timeout=30s")  # fmt: skip
        k.kubectl("create", "namespace", NS)
        pools = [f"pool-{i}" for i in range(args.pools)]
        for pool in pools:
            (tmp / pool).mkdir()
            fleets.append(Fleet(k, tmp / pool, store, NS, pool))
        fleets[0].start_operator()
        docs = [pool_yaml(p, NS, replicas={"min": 1, "max": 1}, memoryBudgetMB=100_000)
                for p in pools]  # fmt: skip
        docs += [model_yaml(f"m{i:03d}", NS, pools[i % len(pools)], memoryMB=10)
                 for i in range(args.models)]  # fmt: skip
        print(f"==> applying {args.pools} pools and {args.models} models", flush=True)
        started = time.monotonic()
        k.kubectl("apply", "-f", "-", input="\n---\n".join(docs))

        def start(fleet: Fleet) -> None:
            """What the kubelet would do for the pool's pod, once it has an IP."""
            pod = wait_for(f"{fleet.pool}'s runtime pod", lambda: fleet.pods("runtime"))[0]
            secret = fleet.json("get", "secret", f"{fleet.pool}-admin-token")
            fleet.token.write_bytes(base64.b64decode(secret["data"]["token"]))
            name = pod["metadata"]["name"]
            wait_for(f"{name}'s state document",
                     lambda: f"{name}.yaml" in fleet.json("get", "configmap",
                                                          f"{fleet.pool}-state")["data"])  # fmt: skip
            fleet.start_runtime(pod)
            print(f"    {fleet.pool}: runtime up at {time.monotonic() - started:.1f} s", flush=True)

        for fleet in fleets:  # one by one: five at once overload a 2-CPU host
            start(fleet)
        runtimes_up = time.monotonic() - started
        last = -1
        deadline = started + 600
        while (ready := ready_count(k)) < args.models:
            if ready != last:
                print(f"    {ready}/{args.models} Ready at {time.monotonic() - started:.1f} s",
                      flush=True)  # fmt: skip
                last = ready
            if time.monotonic() > deadline:
                raise SystemExit(f"only {ready} of {args.models} models Ready after 600 s")
            time.sleep(0.5)
        to_ready = time.monotonic() - started
        print(f"==> all {args.models} models Ready {to_ready:.1f} s after apply", flush=True)
        time.sleep(args.settle)
        print(f"==> {args.window:.0f} s with everything converged", flush=True)
        offset = audit.stat().st_size
        time.sleep(args.window)
        operator, agents = audit_counts(audit, offset, audit.stat().st_size)
        rate = sum(operator.values()) / args.window
        top = [(name, n / args.window) for name, n in operator.most_common(10)]
        result: dict[str, Any] = {
            "pools": args.pools,
            "models": args.models,
            "seconds_to_ready": round(to_ready, 1),
            "seconds_to_ready_after_the_last_runtime_started": round(to_ready - runtimes_up, 1),
            "window_s": args.window,
            "api_requests_per_s": round(sum(agents.values()) / args.window, 2),
            "by_client_per_s": {a: round(n / args.window, 2) for a, n in agents.most_common()},
            "operator_requests_per_s": round(rate, 2),
            "top": [[name, round(r, 2)] for name, r in top],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "operator.json").write_text(json.dumps(result, indent=2) + "\n")
        print(yaml.safe_dump(result, sort_keys=False))
        return 0
    finally:
        for fleet in fleets:
            fleet.stop_operator()
            for proc in fleet.runtimes.values():
                proc.stop()
        plane.stop()
        shutil.rmtree(plane.data, ignore_errors=True)
        print(f"(logs: {tmp})")


if __name__ == "__main__":
    raise SystemExit(main())
