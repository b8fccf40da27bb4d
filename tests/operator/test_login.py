"""The operator's login: in a pod, the API server the kubelet names in
KUBERNETES_SERVICE_HOST/PORT (as client-go reads it), not kopf's DNS name."""

from __future__ import annotations

import kopf
import pytest

from modelfleet.operator import login

SERVICE_ACCOUNT = kopf.ConnectionInfo(
    server="https://kubernetes.default.svc", token="jwt", ca_path="/ca.crt",
    default_namespace="ml",
)  # fmt: skip


@pytest.fixture
def in_a_pod(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: SERVICE_ACCOUNT)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: pytest.fail("kubeconfig read"))
    return monkeypatch


def test_in_a_pod_the_server_is_the_one_the_kubelet_names(in_a_pod: pytest.MonkeyPatch) -> None:
    in_a_pod.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    in_a_pod.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = login.connection()
    assert info is not None and info.server == "https://10.96.0.1:443"
    assert (info.token, info.ca_path, info.default_namespace) == ("jwt", "/ca.crt", "ml")
    in_a_pod.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert login.login(settings=kopf.OperatorSettings()).server == "https://[fd00::1]:443"  # type: ignore[union-attr]


def test_without_the_kubelets_variables_kopfs_service_name_stays(
    in_a_pod: pytest.MonkeyPatch,
) -> None:
    in_a_pod.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    in_a_pod.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert login.connection() == SERVICE_ACCOUNT


def test_outside_a_pod_the_kubeconfig_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="t")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: from_file)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert login.connection() == from_file
