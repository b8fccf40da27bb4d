"""Clients through the gateway's gRPC API: every OIP datatype raw and typed with
tritonclient.grpc and with our own messages, BYTES included, and KServe's own gRPC
client (in its own process: see tests/support/kserve_grpc_client.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import grpc
import pytest

from modelfleet.api import inference_pb2 as pb
from tests.gateway.conftest import mlp
from tests.gateway.test_grpc_proxy import grpc_route
from tests.support.servers import ENV, free_port

pytestmark = pytest.mark.integration
SERVICE = "inference.GRPCInferenceService"
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


def ident(datatype: str) -> dict[str, Any]:
    return {
        "name": f"ident_{datatype.lower()}", "version": "1", "source": "empty.safetensors",
        "architecture": "tests.runtime.models:identity",
        "inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": datatype, "shape": [-1, 4]}],
        "warmup": {"enabled": False},
    }  # fmt: skip


def test_every_datatype_raw_and_typed_and_bytes_through_the_gateway(procs: Any) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import triton_to_np_dtype

    from modelfleet.runtime.zoo import ZOO  # the test's runtime hosts it; the gateway never does

    text_hash = {"name": "text_hash", "version": "1", "source": "text_hash.safetensors",
                 **ZOO["text_hash"]}  # fmt: skip
    runtime = procs.runtime([*(ident(d) for d, _, _ in DATATYPES), text_hash],
                            grpc_port=free_port())  # fmt: skip
    names = [f"ident_{d.lower()}" for d, _, _ in DATATYPES] + ["text_hash"]
    gw = procs.gateway({n: grpc_route(("1", 100, [runtime])) for n in names}, grpc_port=free_port())
    with (
        triton.InferenceServerClient(gw.grpc_address) as client,
        grpc.insecure_channel(gw.grpc_address) as channel,
    ):
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for datatype, field, values in DATATYPES:
            name = f"ident_{datatype.lower()}"
            array = np.array([values], dtype=triton_to_np_dtype(datatype))
            x = triton.InferInput("x", [1, 4], datatype)
            x.set_data_from_numpy(array)
            result = client.infer(name, [x], request_id=f"id-{datatype}",
                                  outputs=[triton.InferRequestedOutput("y")])  # fmt: skip
            assert result.get_response().id == f"id-{datatype}"
            np.testing.assert_array_equal(result.as_numpy("y"), array)
            if field is None:
                continue
            tensor = pb.ModelInferRequest.InferInputTensor(
                name="x", datatype=datatype, shape=[1, 4]
            )
            getattr(tensor.contents, field).extend(values)
            answer = call(pb.ModelInferRequest(model_name=name, inputs=[tensor]))
            got = np.frombuffer(answer.raw_output_contents[0], dtype=array.dtype).reshape(1, 4)
            np.testing.assert_array_equal(got, array)
        direct = triton.InferenceServerClient(runtime.grpc_address)
        for text in (b"the quick brown fox", b"", "caf\u00e9".encode()):
            t = triton.InferInput("text", [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[text]], dtype=object))
            want = direct.infer("text_hash", [t]).as_numpy("embedding")
            np.testing.assert_array_equal(
                client.infer("text_hash", [t]).as_numpy("embedding"), want
            )
            tensor = pb.ModelInferRequest.InferInputTensor(
                name="text", datatype="BYTES", shape=[1, 1]
            )
            tensor.contents.bytes_contents.append(text)
            answer = call(pb.ModelInferRequest(model_name="text_hash", inputs=[tensor]))
            got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
            np.testing.assert_array_equal(got, want.reshape(-1))
        direct.close()


def test_kserves_grpc_client_through_the_gateway(procs: Any) -> None:
    runtime = procs.runtime([mlp("1")], grpc_port=free_port())
    gw = procs.gateway({"mlp": grpc_route(("1", 100, [runtime]))}, grpc_port=free_port())
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.kserve_grpc_client", gw.grpc_address],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    raw, typed = seen["answers"]["raw"], seen["answers"]["typed"]
    assert raw["id"] == typed["id"] == "k-1" and raw["shape"] == typed["shape"] == [2, 4]
    assert raw["data"] == typed["data"]
    assert "unknown model 'nope'" in seen["unknown"]
