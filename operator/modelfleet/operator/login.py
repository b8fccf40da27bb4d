"""How the operator logs in to the API server: inside a pod with its
ServiceAccount's token, else with a kubeconfig (a laptop, the cluster tests).

In a pod, the server is the one the kubelet names in ``KUBERNETES_SERVICE_HOST`` and
``KUBERNETES_SERVICE_PORT``, as client-go's in-cluster configuration reads it; kopf's
own service-account login uses the name ``kubernetes.default.svc`` instead, which
needs cluster DNS (absent for a pod on the host network without a DNS policy, for
example). One function serves both kopf's watches and the operator's own client.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import kopf


def connection(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo | None:
    """The credentials and server to use, or None when there are none."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        return kopf.login_with_kubeconfig(settings=settings)
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if host and port:
        address = f"[{host}]" if ":" in host else host  # an IPv6 address
        info = dataclasses.replace(info, server=f"https://{address}:{port}")
    return info


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """kopf's login: the same as the operator's own client's."""
    return connection(settings)
