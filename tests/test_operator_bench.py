"""``make bench-operator`` counts the operator's requests from the API server's
audit log: by its two user agents, and nobody else's."""

from __future__ import annotations

import json
from pathlib import Path

from bench.operator_bench import audit_counts


def event(agent: str, verb: str, resource: str, code: int = 200, sub: str = "") -> str:
    ref = {"resource": resource, **({"subresource": sub} if sub else {})}
    return json.dumps({"userAgent": agent, "verb": verb, "objectRef": ref,
                       "responseStatus": {"code": code}})  # fmt: skip


def test_only_the_operators_clients_count_as_the_operator(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    skipped = event("Python/3.11 aiohttp/3.12", "get", "configmaps") + "\n"
    lines = [
        event("Python/3.11 aiohttp/3.12", "get", "configmaps"),
        event("Python/3.11 aiohttp/3.12", "patch", "inferencemodels", sub="status"),
        event("kopf/1.38", "watch", "pods"),
        event("kube-controller-manager/v1.34.4 (linux/amd64)", "create", "endpoints", 422),
        event("kubectl/v1.34.4 (linux/amd64)", "get", "inferencemodels"),
        event("Python-urllib/3.11", "get", "metrics"),
    ]
    log.write_text(skipped + "\n".join(lines) + "\n")
    operator, agents = audit_counts(log, len(skipped), log.stat().st_size)
    assert operator == {"get configmaps (200)": 1, "patch inferencemodels/status (200)": 1,
                        "watch pods (200)": 1}  # fmt: skip
    assert agents == {"Python": 2, "kopf": 1, "kube-controller-manager": 1, "kubectl": 1,
                      "Python-urllib": 1}  # fmt: skip
