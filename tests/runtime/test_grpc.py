"""The runtime's OIP gRPC service: tritonclient.grpc (sync and asyncio) just works,
every datatype travels raw and typed, and each bad request gets the status code a
gRPC client expects with REST's words for what is wrong."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_sync
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from modelfleet.api import inference_pb2 as pb
from modelfleet.runtime.grpc_server import SERVICE, build_grpc_server
from modelfleet.runtime.runtime import Runtime
from tests.runtime.conftest import StartRuntime, batch_stats, infer_body, mlp_config, tiny_model
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
TOKEN = "grpc-test-token"
X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)

Served = tuple[Runtime, str, Any]
StartGrpc = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start_grpc(start_runtime: StartRuntime) -> AsyncIterator[StartGrpc]:
    """A runtime in-process with its gRPC service on a free loopback port; returns
    (runtime, "host:port", the REST test client)."""
    servers: list[grpc.aio.Server] = []

    async def start(models: list[dict[str, Any]], **server: Any) -> Served:
        client, runtime = await start_runtime(models, **server)
        grpc_server = build_grpc_server(runtime, TOKEN)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        servers.append(grpc_server)
        return runtime, f"127.0.0.1:{port}", client

    yield start
    for s in servers:
        await s.stop(0)


def mlp_input(x: np.ndarray = X) -> Any:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


async def call(address: str, request: pb.ModelInferRequest, **kwargs: Any) -> Any:
    """ModelInfer with our own messages (typed contents, hand-made bad requests)."""
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        return await method(request, **kwargs)


async def refused(
    address: str, request: pb.ModelInferRequest, **kwargs: Any
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, request, **kwargs)
    return info.value


def typed(name: str, datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor


def mlp_request(**kwargs: Any) -> pb.ModelInferRequest:
    values = X[:1].reshape(-1).tolist()
    fields: dict[str, Any] = {"model_name": "mlp", **kwargs}
    return pb.ModelInferRequest(
        inputs=[typed("input", "FP32", [1, 16], "fp32_contents", values)], **fields
    )


async def test_tritonclient_grpc_health_and_metadata_sync_and_asyncio(
    start_grpc: StartGrpc,
) -> None:
    _, address, _ = await start_grpc([mlp_config()])
    client = triton.InferenceServerClient(address)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("mlp") and await client.is_model_ready("mlp", "1")
        server = await client.get_server_metadata(as_json=True)
        assert server["name"] == "modelfleet" and "model_repository" in server["extensions"]
        meta = await client.get_model_metadata("mlp", as_json=True)
        assert meta["versions"] == ["1"] and meta["platform"] == "pytorch_safetensors"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "4"]}]
        with pytest.raises(InferenceServerException) as info:
            await client.get_model_metadata("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "unknown model 'nope'" in info.value.message()
    finally:
        await client.close()

    def sync_calls() -> tuple[bool, bool, dict[str, Any], np.ndarray]:
        with triton_sync.InferenceServerClient(address) as sync:
            tensor = triton_sync.InferInput("input", [2, 16], "FP32")
            tensor.set_data_from_numpy(X)
            result = sync.infer("mlp", [tensor])
            out = result.as_numpy("output")
            assert out is not None
            return (
                sync.is_server_live(),
                sync.is_model_ready("mlp"),
                sync.get_model_metadata("mlp", as_json=True),
                out,
            )

    live, ready, meta, out = await asyncio.to_thread(sync_calls)
    assert live and ready and meta["name"] == "mlp" and out.shape == (2, 4)


async def test_infer_answers_what_rest_answers_with_id_version_and_requested_outputs(
    start_grpc: StartGrpc,
) -> None:
    _, address, rest = await start_grpc([mlp_config()])
    resp = await rest.post("/v2/models/mlp/infer", json=infer_body("input", X.tolist(), [2, 16]))
    expected = np.array((await resp.json())["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
    client = triton.InferenceServerClient(address)
    try:
        result = await client.infer(
            "mlp", [mlp_input()], model_version="1", request_id="req-7",
            outputs=[triton.InferRequestedOutput("output")],
        )  # fmt: skip
        response = result.get_response()
        assert response.id == "req-7" and response.model_version == "1"
        out = result.as_numpy("output")
        assert out is not None
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        # The same request with typed contents answers the same.
        message = pb.ModelInferRequest(
            model_name="mlp",
            inputs=[typed("input", "FP32", [2, 16], "fp32_contents", X.reshape(-1).tolist())],
        )
        typed_answer = await call(address, message)
        got = np.frombuffer(typed_answer.raw_output_contents[0], np.float32).reshape(2, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert typed_answer.id == ""
    finally:
        await client.close()


DATATYPES: list[tuple[str, str | None, list[Any]]] = [
    ("BOOL", "bool_contents", [True, False, True, False]),
    ("UINT8", "uint_contents", [0, 1, 200, 255]),
    ("UINT16", "uint_contents", [0, 1, 60000, 65535]),
    ("UINT32", "uint_contents", [0, 1, 2**31, 2**32 - 1]),
    ("UINT64", "uint64_contents", [0, 1, 2**40, 7]),
    ("INT8", "int_contents", [-128, -1, 0, 127]),
    ("INT16", "int_contents", [-32768, -1, 0, 32767]),
    ("INT32", "int_contents", [-(2**31), -1, 0, 2**31 - 1]),
    ("INT64", "int64_contents", [-(2**62), -1, 0, 2**62]),
    ("FP16", None, [0.5, -1.5, 2.0, 1024.0]),
    ("FP32", "fp32_contents", [0.25, -1.5, 3.0, 1e10]),
    ("FP64", "fp64_contents", [0.1, -1.5, 3.0, 1e300]),
]


@pytest.mark.parametrize(("datatype", "field", "values"), DATATYPES)
async def test_every_oip_datatype_round_trips_raw_and_typed(
    start_grpc: StartGrpc, datatype: str, field: str | None, values: list[Any]
) -> None:
    _, address, _ = await start_grpc([tiny_model("ident", "identity", datatype)])
    from tritonclient.utils import triton_to_np_dtype

    array = np.array([values], dtype=triton_to_np_dtype(datatype))
    client = triton.InferenceServerClient(address)
    try:
        tensor = triton.InferInput("x", [1, 4], datatype)
        tensor.set_data_from_numpy(array)
        out = (await client.infer("ident", [tensor])).as_numpy("y")
    finally:
        await client.close()
    assert out is not None and out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)
    if field is None:  # FP16 has no typed contents: refused with the way out named
        request = pb.ModelInferRequest(
            model_name="ident", inputs=[typed("x", datatype, [1, 4], "fp32_contents", values)]
        )
        error = await refused(address, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in (error.details() or "")
        return
    answer = await call(
        address,
        pb.ModelInferRequest(
            model_name="ident", inputs=[typed("x", datatype, [1, 4], field, values)]
        ),
    )
    assert answer.outputs[0].datatype == datatype and list(answer.outputs[0].shape) == [1, 4]
    got = np.frombuffer(answer.raw_output_contents[0], dtype=array.dtype).reshape(1, 4)
    np.testing.assert_array_equal(got, array)


async def test_bytes_travel_raw_and_typed(start_grpc: StartGrpc) -> None:
    from modelfleet.runtime import zoo

    config = {"name": "text_hash", "source": "text_hash.safetensors", **zoo.ZOO["text_hash"]}
    _, address, rest = await start_grpc([config])
    texts = [b"the quick brown fox", b"", "caf\u00e9".encode()]
    expected = []
    for text in texts:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1],
                            "data": [text.decode()]}]}  # fmt: skip
        doc = await (await rest.post("/v2/models/text_hash/infer", json=body)).json()
        expected.append(np.array(doc["outputs"][0]["data"], dtype=np.float32))
    client = triton.InferenceServerClient(address)
    try:
        for text, want in zip(texts, expected, strict=True):
            tensor = triton.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text]], dtype=object))
            out = (await client.infer("text_hash", [tensor])).as_numpy("embedding")
            assert out is not None
            np.testing.assert_allclose(out.reshape(-1), want, rtol=1e-6)
            message = pb.ModelInferRequest(
                model_name="text_hash",
                inputs=[typed("text", "BYTES", [1, 1], "bytes_contents", [text])],
            )
            answer = await call(address, message)
            got = np.frombuffer(answer.raw_output_contents[0], np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-6)
    finally:
        await client.close()


def _mlp_tensor(**overrides: Any) -> Any:
    base: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [1, 16]}
    base.update(overrides)
    return pb.ModelInferRequest.InferInputTensor(**base)


def _with_typed(tensor: Any, field: str, values: list[Any]) -> Any:
    getattr(tensor.contents, field).extend(values)
    return tensor


BAD: list[tuple[str, pb.ModelInferRequest, list[str]]] = [
    ("unknown input", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(name="wrong"), "fp32_contents", [0.5] * 16)]),
     ["unknown input 'wrong'", "'input'"]),
    ("datatype", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(datatype="INT32"), "int_contents", [1] * 16)]),
     ["input 'input'", "INT32", "FP32"]),
    ("shape", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(shape=[1, 15]), "fp32_contents", [0.5] * 15)]),
     ["shape [1, 15]", "[-1, 16]"]),
    ("count", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(), "fp32_contents", [0.5] * 10)]),
     ["10 values", "needs 16"]),
    ("empty", pb.ModelInferRequest(model_name="mlp", inputs=[_mlp_tensor(shape=[0, 16])],
                                   raw_input_contents=[b""]), ["empty"]),
    ("nan", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(), "fp32_contents", [float("nan")] + [0.0] * 15)]), ["NaN"]),
    ("no inputs", pb.ModelInferRequest(model_name="mlp"), ["non-empty 'inputs'"]),
    ("no data", pb.ModelInferRequest(model_name="mlp", inputs=[_mlp_tensor()]),
     ["input 'input' has no contents"]),
    ("wrong contents", pb.ModelInferRequest(model_name="mlp", inputs=[
        _with_typed(_mlp_tensor(), "int64_contents", [1] * 16)]),
     ["contents.fp32_contents", "not contents.int64_contents"]),
    ("raw size", pb.ModelInferRequest(model_name="mlp", inputs=[_mlp_tensor()],
                                      raw_input_contents=[b"\0" * 60]),
     ["input 'input'", "60 bytes", "needs 64"]),
    ("raw count", pb.ModelInferRequest(model_name="mlp", inputs=[_mlp_tensor()],
                                       raw_input_contents=[b"\0" * 64, b"\0" * 64]),
     ["2 entries for 1 inputs"]),
    ("priority", mlp_request(parameters={"priority": pb.InferParameter(int64_param=-1)}),
     ["priority"]),
    ("priority type", mlp_request(parameters={"priority": pb.InferParameter(string_param="hi")}),
     ["priority"]),
    ("unknown output", mlp_request(outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")]),
     ["unknown output 'nope'"]),
    ("no model", pb.ModelInferRequest(inputs=[_mlp_tensor()]), ["names no model"]),
]  # fmt: skip


async def test_each_bad_request_is_invalid_argument_naming_the_problem(
    start_grpc: StartGrpc,
) -> None:
    runtime, address, _ = await start_grpc([mlp_config()])
    for what, request, fragments in BAD:
        error = await refused(address, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, error)
        for fragment in fragments:
            assert fragment in (error.details() or ""), (what, error.details())
    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in (info.value.details() or "")
    # Still serving, and every refusal counted under the gRPC label.
    assert (await call(address, mlp_request())).outputs[0].name == "output"
    text = await (await _rest_metrics(runtime)).text()
    assert (
        'modelfleet_requests_total{model="mlp",outcome="ok",protocol="grpc",version="1"} 1.0'
        in text
    )
    assert 'outcome="400",protocol="grpc",version="1"} 14.0' in text


async def _rest_metrics(runtime: Runtime) -> Any:
    from aiohttp.test_utils import TestClient, TestServer

    from modelfleet.runtime.server import build_data_app

    client: TestClient[Any, Any] = TestClient(TestServer(build_data_app(runtime)))
    await client.start_server()
    try:
        resp = await client.get("/metrics")
        await resp.read()
        return resp
    finally:
        await client.close()


async def test_unknown_model_or_version_is_not_found(start_grpc: StartGrpc) -> None:
    _, address, _ = await start_grpc([mlp_config()])
    error = await refused(address, mlp_request(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in error.details()
    error = await refused(address, mlp_request(model_version="9"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no version '9'" in (error.details() or "") and "known: 1" in (error.details() or "")
    client = triton.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.is_model_ready("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        await client.close()


async def test_an_oversized_message_is_refused_and_the_server_keeps_serving(
    start_grpc: StartGrpc,
) -> None:
    _, address, _ = await start_grpc([mlp_config()], max_body_bytes=4096)
    big = np.zeros((400, 16), dtype=np.float32)  # 25.6 kB of tensor data
    client = triton.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("mlp", [mlp_input(big)])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        out = (await client.infer("mlp", [mlp_input()])).as_numpy("output")
        assert out is not None and out.shape == (2, 4)
    finally:
        await client.close()


async def test_rate_limit_is_resource_exhausted_with_retry_after(start_grpc: StartGrpc) -> None:
    _, address, _ = await start_grpc(
        [mlp_config(rate_limit={"requests_per_second": 1, "burst": 2})]
    )
    await call(address, mlp_request())
    await call(address, mlp_request())
    error = await refused(address, mlp_request())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limited to 1 requests/s" in (error.details() or "")
    trailing = dict(error.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 1


SLOW = tiny_model(
    "slow", "slow", architecture_kwargs={"delay_ms": 300},
    batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, warmup={"enabled": False},
)  # fmt: skip


def slow_request(**kwargs: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="slow",
        inputs=[typed("x", "FP32", [1, 4], "fp32_contents", [1.0, 2.0, 3.0, 4.0])],
        **kwargs,
    )


@pytest.mark.parametrize("how", ["timeout parameter", "grpc deadline"])
async def test_a_deadline_that_passes_in_the_queue_is_deadline_exceeded_never_executed(
    start_grpc: StartGrpc, how: str
) -> None:
    runtime, address, _ = await start_grpc([SLOW])
    model = runtime.repository.models[("slow", "1")]
    first = asyncio.ensure_future(call(address, slow_request()))
    await wait_until("the first running", lambda: model.inflight == 1 and not len(model.queue))
    if how == "timeout parameter":  # Triton's timeout, in µs: 50 ms, the client waits longer
        request = slow_request(parameters={"timeout": pb.InferParameter(int64_param=50_000)})
        error = await refused(address, request, timeout=5)
        assert "deadline expired" in (error.details() or "")
    else:  # the client's own gRPC deadline becomes the request's deadline
        error = await refused(address, slow_request(), timeout=0.05)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await first).outputs[0].name == "y"
    await wait_until("the model idle", lambda: model.inflight == 0 and not len(model.queue))
    _, rows = batch_stats(runtime, "slow")
    assert rows == 1, "the expired request must never reach the model"


async def test_priority_parameter_sets_the_level_and_displaces_a_low_one(
    start_grpc: StartGrpc,
) -> None:
    slow = {**SLOW, "queue": {"max_size": 2}, "architecture_kwargs": {"delay_ms": 200}}
    runtime, address, _ = await start_grpc([slow])
    model = runtime.repository.models[("slow", "1")]
    running = asyncio.ensure_future(call(address, slow_request()))
    await wait_until("the first running", lambda: model.inflight == 1 and not len(model.queue))
    queued = [asyncio.ensure_future(call(address, slow_request())) for _ in range(2)]
    await wait_until("two low ones queued", lambda: len(model.queue) == 2)
    # tritonclient sends priority as a uint64 parameter.
    client = triton.InferenceServerClient(address)
    try:
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        urgent = await client.infer("slow", [x], priority=1)
        assert urgent.as_numpy("y") is not None
    finally:
        await client.close()
    results = await asyncio.gather(running, *queued, return_exceptions=True)
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.UNAVAILABLE
    assert "higher-priority request" in (errors[0].details() or "")
    text = await (await _rest_metrics(runtime)).text()
    assert 'modelfleet_admitted_total{model="slow",priority="1",version="1"} 1.0' in text


async def test_repository_index_load_and_unload_need_the_admin_token(
    start_grpc: StartGrpc,
) -> None:
    config = mlp_config()
    _, address, _ = await start_grpc([config])
    auth = {"authorization": f"Bearer {TOKEN}"}
    client = triton.InferenceServerClient(address)
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.get_model_repository_index()
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        index = await client.get_model_repository_index(headers=auth, as_json=True)
        assert [(m["name"], m["version"], m["state"]) for m in index["models"]] == [
            ("mlp", "1", "READY")
        ]
        await client.unload_model("mlp", headers=auth)
        assert not (await client.get_model_repository_index(headers=auth, as_json=True)).get(
            "models"
        )
        with pytest.raises(InferenceServerException) as info:
            await client.infer("mlp", [mlp_input()])
        assert info.value.status() == "StatusCode.NOT_FOUND"
        # Unloading took it out of the desired state: loading names its config again.
        await client.load_model("mlp", headers=auth, config=json.dumps(config))
        out = (await client.infer("mlp", [mlp_input()])).as_numpy("output")
        assert out is not None and out.shape == (2, 4)
        with pytest.raises(InferenceServerException) as info:
            await client.load_model("nope", headers=auth)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "not in the desired state" in info.value.message()
    finally:
        await client.close()


async def test_a_draining_runtime_answers_unavailable(start_grpc: StartGrpc) -> None:
    runtime, address, _ = await start_grpc([mlp_config()])
    runtime.draining = True
    error = await refused(address, mlp_request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (error.details() or "")
    client = triton.InferenceServerClient(address)
    try:
        assert not await client.is_server_ready()
        assert not await client.is_model_ready("mlp")
    finally:
        await client.close()
    runtime.draining = False


def test_modelfleet_serve_opens_the_grpc_port_and_drains_on_sigterm(serve: Any) -> None:
    from tests.support.servers import free_port

    runtime = serve([mlp_config()], grpc_port=free_port())
    assert runtime.grpc_address is not None
    with triton_sync.InferenceServerClient(runtime.grpc_address) as client:
        assert client.is_server_ready()
        tensor = triton_sync.InferInput("input", [2, 16], "FP32")
        tensor.set_data_from_numpy(X)
        out = client.infer("mlp", [tensor]).as_numpy("output")
        assert out is not None and out.shape == (2, 4)
    assert "gRPC API listening on grpc://127.0.0.1:" in runtime.log_tail()
    assert runtime.stop() == 0


def test_kserves_grpc_client_just_works(serve: Any) -> None:
    """KServe's InferenceGRPCClient (in its own process: see the script's docstring)."""
    import subprocess
    import sys

    from tests.support.servers import ENV, free_port

    runtime = serve([mlp_config()], grpc_port=free_port())
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.kserve_grpc_client", runtime.grpc_address],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    with triton_sync.InferenceServerClient(runtime.grpc_address) as client:
        tensor = triton_sync.InferInput("input", [2, 16], "FP32")
        tensor.set_data_from_numpy(X)
        expected = client.infer("mlp", [tensor]).as_numpy("output")
    assert expected is not None
    for how in ("raw", "typed"):
        answer = seen["answers"][how]
        assert answer["id"] == "k-1" and answer["name"] == "output" and answer["shape"] == [2, 4]
        np.testing.assert_allclose(answer["data"], expected.reshape(-1), rtol=1e-6)
    assert "unknown model 'nope'" in seen["unknown"]


async def test_priority_given_only_as_gateway_metadata_or_header_queues_at_that_level(
    start_grpc: StartGrpc,
) -> None:
    runtime, address, rest = await start_grpc([mlp_config()])
    await call(address, mlp_request(), metadata=(("x-modelfleet-priority", "2"),))
    body = infer_body("input", [[0.5] * 16], [1, 16])
    resp = await rest.post(
        "/v2/models/mlp/infer", json=body, headers={"X-ModelFleet-Priority": "3"}
    )
    assert resp.status == 200
    text = await (await _rest_metrics(runtime)).text()
    for level in ("2", "3"):
        assert (
            f'modelfleet_admitted_total{{model="mlp",priority="{level}",version="1"}} 1.0' in text
        )
