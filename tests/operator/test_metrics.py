"""The operator's Prometheus metrics: desired and ready copies per model (series of a
model that left the pool removed), scale decisions by resource and reason, pool pods."""

from __future__ import annotations

from prometheus_client import generate_latest

from modelfleet.operator import metrics


def exposition() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_copies_per_model_and_the_series_of_a_model_that_left_are_removed() -> None:
    metrics.record_copies("ml", "gpu", {"hot": (3, 2), "calm": (1, 1)})
    text = exposition()
    assert 'modelfleet_desired_copies{model="hot",namespace="ml",pool="gpu"} 3.0' in text
    assert 'modelfleet_ready_copies{model="hot",namespace="ml",pool="gpu"} 2.0' in text
    metrics.record_copies("ml", "gpu", {"hot": (1, 1)})
    text = exposition()
    assert 'modelfleet_desired_copies{model="hot",namespace="ml",pool="gpu"} 1.0' in text
    assert 'model="calm"' not in text


def test_scale_decisions_are_counted_by_resource_and_reason() -> None:
    for _ in range(2):
        metrics.record_decision("ml", "InferenceModel", "hot", "ScaledUp")
    metrics.record_decision("ml", "InferencePool", "gpu", "ScaleBlocked")
    text = exposition()
    assert ('modelfleet_scale_decisions_total{kind="InferenceModel",name="hot",namespace="ml",'
            'reason="ScaledUp"} 2.0') in text  # fmt: skip
    assert ('modelfleet_scale_decisions_total{kind="InferencePool",name="gpu",namespace="ml",'
            'reason="ScaleBlocked"} 1.0') in text  # fmt: skip


def test_pool_pods_desired_current_and_ready() -> None:
    metrics.record_pool("ml", "gpu", 3, 2, 2)
    text = exposition()
    assert 'modelfleet_pool_pods{namespace="ml",pool="gpu",state="desired"} 3.0' in text
    assert 'modelfleet_pool_pods{namespace="ml",pool="gpu",state="current"} 2.0' in text
