"""A pass's plan as pure data: placement, documents the runtime accepts, routes
the gateway accepts, and what each model reports."""

from __future__ import annotations

import pytest
import yaml

from modelfleet.api.runtime_document import ModelConfig, Padding, parse_document
from modelfleet.gateway.routes import parse_routes
from modelfleet.operator.desired import plan
from modelfleet.operator.podapi import same_models, same_routes
from modelfleet.operator.reconcile import remembered, state_data, state_file
from modelfleet.operator.spec import ModelSpec, runtime_model
from tests.operator.builders import MLP_SOURCE, model, pod, pool, sequence_spec_dict


def written_models(models: list[ModelConfig]) -> list[dict[str, object]]:
    """The ``models`` of a pod's document as the operator writes it (its ConfigMap key)."""
    return list(yaml.safe_load(state_file(pool(), models))["models"])


def test_documents_place_replicas_on_distinct_pods_and_the_runtime_accepts_them() -> None:
    pods = [pod("gpu-0", "127.1.0.2"), pod("gpu-1", "127.1.0.3")]
    result = plan(pool(), {"mlp": model(replicas=2, rateLimit={"requestsPerSecond": 5})}, pods)
    assert result.placement.pods_of[("mlp", "1")] == ["gpu-0", "gpu-1"]
    for name, models in result.documents.items():
        document = parse_document(yaml.safe_load(state_file(pool(), models)))
        assert [(m.name, m.version) for m in document.models] == [("mlp", "1")], name
        entry = document.models[0]
        assert entry.batching.max_batch_size == 8 and entry.memory_mb == 500
        assert entry.rate_limit is not None and entry.rate_limit.requests_per_second == 5
        assert document.server.memory_budget_mb == 2000  # the pool's budget is the runtime's
        assert document.server.admin_token_file == "/var/run/modelfleet/token"


def test_routes_list_only_ready_endpoints_and_the_gateway_accepts_them() -> None:
    pods = [
        pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}),
        pod("gpu-1", "127.1.0.3", {("mlp", "1"): "loading"}),
    ]
    result = plan(pool(), {"mlp": model(replicas=2)}, pods)
    routes = parse_routes({"models": result.routes})
    assert routes.models["mlp"].versions[0].endpoints == ("http://127.1.0.2:8080",)
    report = result.reports["mlp"].stable
    assert report.endpoints == ["http://127.1.0.2:8080"] and report.loading == ["gpu-1"]


def test_a_canary_splits_the_weights_and_reports_its_role() -> None:
    spec = model(replicas=1, canary={"version": "2", "weight": 25, "source": MLP_SOURCE})
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "ready"})]
    result = plan(pool(), {"mlp": spec}, pods)
    versions = result.routes["mlp"].versions
    assert [(v.version, v.weight) for v in versions] == [("1", 75), ("2", 25)]
    assert [(v.version, v.role) for v in result.reports["mlp"].versions] == [
        ("1", "stable"),
        ("2", "canary"),
    ]


def test_a_version_not_yet_ready_gets_no_traffic_and_what_is_ready_takes_it() -> None:
    spec = model(replicas=1, canary={"version": "2", "weight": 100, "source": MLP_SOURCE})
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "warming"})]
    versions = plan(pool(), {"mlp": spec}, pods).routes["mlp"].versions
    assert [(v.version, v.weight) for v in versions] == [("1", 1), ("2", 0)]


def test_a_restarted_operator_reads_the_placements_from_the_pods() -> None:
    # The pods host the model on gpu-1 and gpu-2; a fresh plan would pick gpu-0 and gpu-1.
    pods = [pod("gpu-0", "127.1.0.2"), pod("gpu-1", "127.1.0.3", {("mlp", "1"): "ready"}),
            pod("gpu-2", "127.1.0.4", {("mlp", "1"): "ready"})]  # fmt: skip
    result = plan(pool(), {"mlp": model(replicas=2)}, pods)
    assert result.placement.pods_of[("mlp", "1")] == ["gpu-1", "gpu-2"]
    assert result.placed == [] and result.removed == []


def test_a_pod_that_does_not_answer_keeps_its_placement_from_its_durable_document() -> None:
    silent = pod("gpu-1", "127.1.0.3")
    silent.state = None
    spec = model(replicas=1)
    data = state_data(
        "gpu", pool(), {}, {"gpu-1": [runtime_model("mlp", spec, spec.versions()[0])]}
    )
    silent.remembered = remembered(data, "gpu-1")
    assert [m.key for m in silent.remembered] == [("mlp", "1")]
    result = plan(pool(), {"mlp": spec}, [pod("gpu-0", "127.1.0.2"), silent])
    assert result.placement.pods_of[("mlp", "1")] == ["gpu-1"]
    assert result.routes["mlp"].versions[0].endpoints == ()


def test_state_config_map_has_a_file_for_every_pod_up_to_max_and_keeps_others() -> None:
    data = state_data("gpu", pool(), {"gpu-7.yaml": "models: []\n"}, {"gpu-0": []})
    assert set(data) == {"gpu-0.yaml", "gpu-1.yaml", "gpu-2.yaml", "gpu-7.yaml"}
    assert parse_document(yaml.safe_load(data["gpu-2.yaml"])).models == ()


def test_memory_is_the_declared_figure_else_the_measured_one() -> None:
    spec = model(replicas=1, memoryMB=None)
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"}, memory_mb=321.5)]
    assert plan(pool(), {"mlp": spec}, pods).reports["mlp"].stable.memory_mb == 321.5


def test_a_failed_load_is_reported_with_the_runtimes_reason() -> None:
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "failed"}, reason="sha256 mismatch")]
    report = plan(pool(), {"mlp": model(replicas=1)}, pods).reports["mlp"].stable
    assert report.failures == ["gpu-0: sha256 mismatch"] and report.endpoints == []


def test_same_models_ignores_the_defaults_the_runtime_fills_in() -> None:
    result = plan(pool(), {"mlp": model(replicas=1)}, [pod("gpu-0", "127.1.0.2")])
    wanted = result.documents["gpu-0"]
    reported = parse_document({"models": wanted}).model_dump(mode="json")["models"]
    assert same_models(reported, wanted)
    assert not same_models([], wanted)
    changed = [{**reported[0], "priority": 99}]
    assert not same_models(changed, wanted)


def test_same_routes_compares_what_the_gateway_reports() -> None:
    result = plan(
        pool(), {"mlp": model(replicas=1)}, [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})]
    )
    reported = parse_routes({"models": result.routes}).model_dump(mode="json")["models"]
    assert same_routes(reported, result.routes)
    assert not same_routes({}, result.routes) and not same_routes(None, result.routes)


def test_the_pools_runtime_settings_reach_every_pods_document() -> None:
    pods = [pod("cpu-0", "127.1.0.2")]
    custom = pool(runtime={"executor": "process", "torchThreads": 1, "forwardNice": 10,
                           "yieldBatchMs": 2.5, "expressLane": False},
                  resources={"gpu": 0})  # fmt: skip
    for spec, executor, threads, nice, yields, express in (
        (pool(), "thread", None, 0, None, True), (custom, "process", 1, 10, 2.5, False),
    ):  # fmt: skip
        result = plan(spec, {"mlp": model(replicas=1)}, pods)
        document = parse_document(yaml.safe_load(state_file(spec, result.documents["cpu-0"])))
        assert document.server.executor == executor
        assert document.server.torch_threads == threads
        assert document.server.forward_nice == nice  # the runtime's default when not set
        assert document.server.yield_batch_ms == yields
        assert document.server.express_lane is express  # the runtime's default when not set


def test_a_models_optimize_setting_reaches_the_runtime_document() -> None:
    pods = [pod("gpu-0", "127.1.0.2")]
    for spec, wanted in (
        (model(replicas=1), "none"),
        (model(replicas=1, optimize="trace"), "trace"),
    ):
        result = plan(pool(), {"mlp": spec}, pods)
        document = parse_document(yaml.safe_load(state_file(pool(), result.documents["gpu-0"])))
        assert document.models[0].optimize == wanted


def test_a_pad_spec_and_bytes_tensors_reach_the_runtime_document_in_its_form() -> None:
    spec = ModelSpec.model_validate(sequence_spec_dict(replicas=1))
    result = plan(pool(), {"enc": spec}, [pod("gpu-0", "127.1.0.2")])
    [entry] = written_models(result.documents["gpu-0"])  # as the ConfigMap holds it
    assert entry["batching"] == {
        "max_batch_size": 32,
        "max_queue_delay_ms": 2.0,
        "pad": {"inputs": {"ids": 0, "mask": 0}, "axis": 1, "buckets": [32, 64, 128],
                "outputs": ["states"]},
    }  # fmt: skip
    assert entry["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                               {"name": "mask", "datatype": "INT64", "shape": [-1, -1]},
                               {"name": "lang", "datatype": "BYTES", "shape": [-1, 1]}]  # fmt: skip
    config = ModelConfig.model_validate(entry)
    assert config == result.documents["gpu-0"][0]
    assert config.batching.pad == Padding(
        inputs={"ids": 0, "mask": 0}, axis=1, buckets=(32, 64, 128), outputs=("states",)
    )
    assert config.batching.pad.bucket(40) == 64 and config.batching.pad.bucket(129) is None
    assert [t.datatype for t in config.outputs] == ["FP32", "BYTES"]
    document = parse_document(yaml.safe_load(state_file(pool(), result.documents["gpu-0"])))
    assert document.models[0].batching == config.batching  # the mounted file says the same


def test_without_pad_the_document_leaves_it_out_and_the_runtime_batches_one_shape() -> None:
    result = plan(pool(), {"mlp": model(replicas=1)}, [pod("gpu-0", "127.1.0.2")])
    [entry] = written_models(result.documents["gpu-0"])
    assert entry["batching"] == {"max_batch_size": 8, "max_queue_delay_ms": 1.0}
    assert ModelConfig.model_validate(entry).batching.pad is None


def test_removing_pad_or_the_rate_limit_is_pushed_to_a_pod_that_still_has_it() -> None:
    pods = [pod("gpu-0", "127.1.0.2")]
    unpadded = sequence_spec_dict(replicas=1, batching={"maxBatchSize": 32, "maxQueueDelayMs": 2})
    for before, after in (
        (ModelSpec.model_validate(sequence_spec_dict(replicas=1)), ModelSpec.model_validate(unpadded)),
        (model(replicas=1, rateLimit={"requestsPerSecond": 5}), model(replicas=1)),
    ):  # fmt: skip
        had = plan(pool(), {"m": before}, pods).documents["gpu-0"]
        reported = parse_document({"models": had}).model_dump(mode="json")["models"]
        assert same_models(reported, had)
        wanted = plan(pool(), {"m": after}, pods).documents["gpu-0"]
        assert not same_models(reported, wanted)
        now = parse_document({"models": wanted}).model_dump(mode="json")["models"]
        assert same_models(now, wanted)


def test_a_latency_objective_reaches_the_runtime_document_and_leaves_it_when_removed() -> None:
    pods = [pod("gpu-0", "127.1.0.2")]
    result = plan(pool(), {"mlp": model(latencyObjectiveMs=40)}, pods)
    (models,) = result.documents.values()
    document = parse_document(yaml.safe_load(state_file(pool(), models)))
    assert document.models[0].latency_objective_ms == 40
    without = plan(pool(), {"mlp": model()}, pods)
    (plain,) = without.documents.values()
    assert plain[0].latency_objective_ms is None
    assert "latency_objective_ms" not in written_models(plain)[0]
    reported = written_models(models)  # a pod told the objective
    assert not same_models(reported, plain), "a removed objective must be pushed to the pod"


def test_the_routes_the_operator_writes_satisfy_the_gateways_contract() -> None:
    """The operator builds its routes with modelfleet.api.routes (what the gateways
    parse them with): a valid plan passes, a route the gateway would refuse fails."""
    import pydantic

    from modelfleet.operator.desired import VersionReport, route
    from modelfleet.operator.reconcile import routes_file

    spec = model(canary={"version": "2", "weight": 25, "source": MLP_SOURCE})
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "ready"})]
    document = yaml.safe_load(routes_file(plan(pool(), {"mlp": spec}, pods).routes))
    assert parse_routes(document).models["mlp"].versions[1].weight == 25
    bad = VersionReport("1", "stable", 100, 1, 500.0, endpoints=["10.0.0.1:8080"])
    with pytest.raises(pydantic.ValidationError, match="must start with http"):
        route(spec, [bad], 64)


def test_the_document_the_operator_writes_parses_back_to_the_one_it_built() -> None:
    """What the ConfigMap holds (and the PUT body carries) is the typed document the
    operator built: the runtime reads exactly what was decided."""
    from modelfleet.operator.desired import runtime_document
    from modelfleet.operator.podapi import document_entry

    pods = [pod("gpu-0", "127.1.0.2")]
    sha = "ab" * 32
    specs = {
        "mlp": model(replicas=1, rateLimit={"requestsPerSecond": 5, "burst": 2},
                     latencyObjectiveMs=40, source={**MLP_SOURCE, "sha256": sha},
                     warmup={"enabled": False, "data": "random"}, optimize="trace"),
        "enc": ModelSpec.model_validate(sequence_spec_dict(replicas=1, memoryMB=None)),
    }  # fmt: skip
    threads = pool(runtime={"executor": "process", "torchThreads": 2})
    for pool_spec in (pool(), threads):
        result = plan(pool_spec, specs, pods)
        models = result.documents["gpu-0"]
        assert [m.name for m in models] == ["enc", "mlp"]
        built = runtime_document(pool_spec, models)
        assert parse_document(yaml.safe_load(state_file(pool_spec, models))) == built
        put = {"models": [document_entry(m) for m in models]}
        assert parse_document(put).models == built.models


def test_the_written_document_holds_the_keys_the_operator_sets_and_no_others() -> None:
    """Optional fields the spec leaves out, and defaults the operator never sets, are
    not written: a runtime that predates one still takes the document."""
    result = plan(pool(), {"mlp": model(replicas=1)}, [pod("gpu-0", "127.1.0.2")])
    written = yaml.safe_load(state_file(pool(), result.documents["gpu-0"]))
    assert set(written["server"]) == {"host", "port", "admin_port", "grpc_port",
                                      "admin_token_file", "memory_budget_mb", "drain_grace_s",
                                      "model_store", "executor"}  # fmt: skip
    assert written["server"]["grpc_port"] == 8001
    [entry] = written["models"]
    assert set(entry) == {"name", "version", "source", "format", "trusted", "priority",
                          "inputs", "outputs", "batching", "queue", "cache", "warmup",
                          "optimize", "architecture", "memory_mb"}  # fmt: skip
    assert entry["queue"] == {"max_size": 256, "timeout_ms": 30_000}
    assert entry["cache"] == {"enabled": False, "max_bytes": 64 * 1024 * 1024}
    assert entry["warmup"] == {"enabled": True, "data": "zero"}
    threads = pool(runtime={"torchThreads": 2})
    server = yaml.safe_load(state_file(threads, []))["server"]
    assert server["torch_threads"] == 2 and server["executor"] == "thread"


def test_the_routes_the_operator_writes_parse_back_to_the_ones_it_built() -> None:
    from modelfleet.api.routes import RoutesDocument
    from modelfleet.operator.reconcile import routes_file

    spec = model(canary={"version": "2", "weight": 25, "source": MLP_SOURCE})
    pods = [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready", ("mlp", "2"): "ready"})]
    routes = plan(pool(), {"mlp": spec}, pods).routes
    written = yaml.safe_load(routes_file(routes))
    assert RoutesDocument.model_validate(written).models == routes
    assert set(written["models"]["mlp"]) == {"priority", "max_concurrency", "timeout_ms",
                                             "versions"}  # fmt: skip
    assert written["models"]["mlp"]["versions"][1] == {
        "version": "2", "weight": 25, "endpoints": ["http://127.1.0.2:8080"],
        "grpc_endpoints": ["127.1.0.2:8001"]}  # fmt: skip
    assert written["server"]["grpc_port"] == 8001


def test_fields_a_newer_pod_reports_that_the_operator_does_not_know_are_no_difference() -> None:
    result = plan(
        pool(), {"mlp": model(replicas=1)}, [pod("gpu-0", "127.1.0.2", {("mlp", "1"): "ready"})]
    )
    wanted = result.documents["gpu-0"]
    [reported] = parse_document({"models": wanted}).model_dump(mode="json")["models"]
    newer = {**reported, "future": 1, "batching": {**reported["batching"], "later": True}}
    assert same_models([newer], wanted)
    assert not same_models([{**newer, "priority": 99}], wanted)
    assert not same_models([{"name": "mlp", "version": "1"}], wanted)  # not a valid entry
    routes = parse_routes({"models": result.routes}).model_dump(mode="json")["models"]
    routes["mlp"]["future"] = "x"
    assert same_routes(routes, result.routes)


async def test_a_spec_the_runtime_would_refuse_is_reported_invalid_and_left_out() -> None:
    """A spec that passes the operator's models but not the runtime's (a schema without
    the CEL rules let a 0 dimension through) is marked InvalidSpec; the other models
    of the pool are still planned."""
    from typing import Any

    from modelfleet.operator.reconcile import Reconciler
    from tests.operator.builders import model_obj

    class FakeKube:
        def __init__(self) -> None:
            self.statuses: dict[str, dict[str, Any]] = {}

        async def apply(self, obj: dict[str, Any]) -> None:
            return None

        async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                               status: dict[str, Any]) -> None:  # fmt: skip
            self.statuses[name] = status

    kube = FakeKube()
    reconciler = Reconciler(kube, None)  # type: ignore[arg-type]
    bad = model_obj("bad", inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 0]}])
    objs, specs = await reconciler._models("gpu", [model_obj("mlp"), bad])
    assert list(specs) == ["mlp"] and [o["metadata"]["name"] for o in objs] == ["mlp"]
    [degraded, _] = kube.statuses["bad"]["conditions"]
    assert (degraded["type"], degraded["reason"]) == ("Degraded", "InvalidSpec")
    assert "dimensions must be positive or -1" in degraded["message"]
