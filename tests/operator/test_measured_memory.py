"""Placement by measured device memory (issue 20's operator side): a version is placed
with the peak its pods measured on the device (weights plus the largest warm-up
batch's working memory) once known, and with the declared memoryMB before; a
measurement above the declaration is reported."""

from __future__ import annotations

from modelfleet.operator.desired import measured_peak, plan
from modelfleet.operator.observed import PodView, RuntimeState
from modelfleet.operator.reconcile import Reconciler
from modelfleet.operator.status import model_conditions, version_status
from tests.operator.builders import model, model_obj, pool
from tests.operator.test_autoscale import FakeKube


def measuring_pod(name: str, ip: str, weights_mb: float | None, working_mb: float | None,
                  ) -> PodView:  # fmt: skip
    state = RuntimeState.model_validate({
        "desired": {"models": [{"name": "mlp", "version": "1"}]},
        "actual": {"ready": True, "models": [{
            "name": "mlp", "version": "1", "state": "ready", "memory_mb": 12.0,
            "weights_mb": weights_mb, "peak_working_mb": working_mb}]},
    })  # fmt: skip
    return PodView(name, ip, state)


def test_the_measured_peak_replaces_the_declared_memory_once_known() -> None:
    spec = {"mlp": model(replicas=1, memoryMB=500)}
    unmeasured = plan(pool(), spec, [measuring_pod("gpu-0", "10.0.0.1", None, None)])
    stable = unmeasured.reports["mlp"].stable
    assert (stable.memory_mb, stable.declared_mb, stable.measured_mb) == (500, 500, None)
    assert not stable.over_declared
    pods = [measuring_pod("gpu-0", "10.0.0.1", 400.0, 300.0),
            measuring_pod("gpu-1", "10.0.0.2", 400.0, 250.0)]  # fmt: skip
    assert measured_peak(pods) == {("mlp", "1"): 700.0}
    measured = plan(pool(), spec, pods).reports["mlp"].stable
    assert (measured.memory_mb, measured.declared_mb, measured.measured_mb) == (700, 500, 700)
    assert measured.over_declared


def test_a_measured_peak_under_the_declaration_frees_the_difference_for_placement() -> None:
    """Two 600 MB declarations do not share a 1,000 MB pod; measured at 450 MB they do."""
    specs = {"a": model(replicas=1, memoryMB=600), "b": model(replicas=1, memoryMB=600)}
    small = pool(memoryBudgetMB=1000, replicas={"min": 1, "max": 1})
    state = RuntimeState.model_validate({
        "desired": {"models": [{"name": n, "version": "1"} for n in ("a", "b")]},
        "actual": {"ready": True, "models": [
            {"name": n, "version": "1", "state": "ready", "weights_mb": 300.0,
             "peak_working_mb": 150.0} for n in ("a", "b")]},
    })  # fmt: skip
    result = plan(small, specs, [PodView("gpu-0", "10.0.0.1", state)])
    assert result.placement.pods_of == {("a", "1"): ["gpu-0"], ("b", "1"): ["gpu-0"]}
    declared_only = plan(small, specs, [PodView("gpu-0", "10.0.0.1")])
    assert sum(len(p) for p in declared_only.placement.pods_of.values()) == 1


async def test_a_measurement_over_the_declaration_is_a_warning_once() -> None:
    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    objs, specs = await reconciler._models("gpu", [model_obj(replicas=1, memoryMB=500)])
    pods = [measuring_pod("gpu-0", "10.0.0.1", 400.0, 300.0)]
    for _ in range(2):
        result = plan(pool(), specs, pods)
        await reconciler._events("ml", objs, result, {})
    warned = [(m, k) for r, m, k in kube.events if r == "MemoryOverDeclared"]
    assert len(warned) == 1 and warned[0][1] == "Warning"
    assert "measured 700 MB" in warned[0][0] and "memoryMB 500" in warned[0][0]


def test_status_shows_declared_and_measured_memory_and_a_condition_when_over() -> None:
    spec = {"mlp": model(replicas=1, memoryMB=500)}
    over = plan(pool(), spec, [measuring_pod("gpu-0", "10.0.0.1", 400.0, 300.0)])
    report = over.reports["mlp"]
    entry = version_status(report.stable)
    assert (entry["memoryMB"], entry["declaredMemoryMB"], entry["measuredMemoryMB"]) == (
        700,
        500,
        700,
    )
    cond = {c["type"]: c for c in model_conditions(report)}["MemoryOverDeclared"]
    assert (cond["status"], cond["reason"]) == ("True", "MeasuredOverDeclared")
    assert "measured 700 MB, memoryMB 500" in cond["message"]
    within = plan(pool(), spec, [measuring_pod("gpu-0", "10.0.0.1", 300.0, 100.0)])
    cond = {c["type"]: c for c in model_conditions(within.reports["mlp"])}["MemoryOverDeclared"]
    assert (cond["status"], cond["reason"]) == ("False", "WithinDeclared")
    cpu = plan(pool(), spec, [measuring_pod("gpu-0", "10.0.0.1", None, None)])
    cond = {c["type"]: c for c in model_conditions(cpu.reports["mlp"])}["MemoryOverDeclared"]
    assert (cond["status"], cond["reason"]) == ("False", "NotMeasured")
    assert "measuredMemoryMB" not in version_status(cpu.reports["mlp"].stable)
