"""Realistic models (the zoo) served under concurrency: every answer equals the
model's own unbatched forward pass, whatever else shares its batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelfleet.runtime import zoo
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.loader import load_module
from tests.runtime.conftest import StartRuntime, tiny_model

pytestmark = pytest.mark.integration
EXECUTORS = ["thread", "process"]
HEADER = "Inference-Header-Content-Length"


def zoo_config(name: str, served_as: str | None = None, **overrides: Any) -> dict[str, Any]:
    return {
        "name": served_as or name,
        "source": f"{name}.safetensors",
        "queue": {"max_size": 512},
        **zoo.ZOO[name],
        **overrides,
    }


def reference(name: str, store: Path) -> torch.nn.Module:
    config = ModelConfig.model_validate(zoo_config(name))
    return load_module(config, store, torch.device("cpu"))


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    data = [v.decode() for v in array.reshape(-1)] if datatype == "BYTES" else array.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def binary_body(inputs: list[tuple[str, np.ndarray, str]]) -> tuple[bytes, dict[str, str]]:
    """An OIP request with every input as Triton binary tensor data."""
    entries, blobs = [], []
    for name, array, datatype in inputs:
        raw = np.ascontiguousarray(array).tobytes()
        entries.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        blobs.append(raw)
    head = json.dumps({"inputs": entries, "parameters": {"binary_data_output": True}}).encode()
    return b"".join([head, *blobs]), {HEADER: str(len(head))}


def binary_outputs(raw: bytes, header_length: str) -> dict[str, np.ndarray]:
    n = int(header_length)
    doc, offset, out = json.loads(raw[:n]), n, {}
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
    for entry in doc["outputs"]:
        size = entry["parameters"]["binary_data_size"]
        dtype = dtypes[entry["datatype"]]
        out[entry["name"]] = np.frombuffer(raw[offset : offset + size], dtype).reshape(
            entry["shape"]
        )
        offset += size
    return out


def sequence(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 1000, size=(1, length), dtype=np.int64)
    return ids, np.ones((1, length), dtype=np.int64)


async def post_sequences(
    client: Any, model: str, lengths: list[int], outputs: list[str]
) -> list[dict[str, np.ndarray]]:
    async def one(i: int, length: int) -> dict[str, np.ndarray]:
        ids, mask = sequence(length, i)
        body = {"inputs": [tensor("ids", ids, "INT64"), tensor("mask", mask, "INT64")]}
        resp = await client.post(f"/v2/models/{model}/infer", json=body)
        doc = await resp.json()
        assert resp.status == 200, f"length {length}: {doc}"
        return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}

    return await asyncio.gather(*(one(i, n) for i, n in enumerate(lengths)))


def expected_sequence(module: torch.nn.Module, lengths: list[int]) -> list[dict[str, np.ndarray]]:
    out = []
    with torch.inference_mode():
        for i, length in enumerate(lengths):
            ids, mask = sequence(length, i)
            result = module(torch.from_numpy(ids), torch.from_numpy(mask))
            if isinstance(result, torch.Tensor):
                result = {"logits": result}
            out.append({k: v.numpy() for k, v in result.items()})
    return out


LENGTHS = [5, 7, 5, 9, 12, 5, 7, 30, 17, 64, 3, 100, 5, 7, 128, 1]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("padding", [False, True], ids=["exact-shapes", "padded"])
@pytest.mark.parametrize("name", ["bert", "gpt"])
async def test_sequences_of_mixed_lengths_in_one_queue_all_get_their_unbatched_answer(
    start_runtime: StartRuntime, model_store: Path, name: str, padding: bool, executor: str
) -> None:
    batching = zoo.padded(name) if padding else {"max_batch_size": 16, "max_queue_delay_ms": 20}
    client, runtime = await start_runtime([zoo_config(name, batching=batching)], executor=executor)
    lengths = LENGTHS * 2
    answers = await post_sequences(client, name, lengths, [])
    expected = expected_sequence(reference(name, model_store), lengths)
    for length, got, want in zip(lengths, answers, expected, strict=True):
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key].shape, f"{key} for length {length}"
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)
    assert runtime.repository.models[(name, "1")].errors == 0


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_padding_puts_different_lengths_into_one_batch_and_cuts_tokens_back(
    start_runtime: StartRuntime, model_store: Path, executor: str
) -> None:
    batching = {**zoo.padded("bert"), "max_queue_delay_ms": 50, "eager": False}
    client, runtime = await start_runtime(
        [zoo_config("bert", batching=batching)], executor=executor
    )
    lengths = [3, 9, 16, 5, 11, 2, 14, 7]  # all in the 16 bucket
    answers = await post_sequences(client, "bert", lengths, [])
    assert [a["tokens"].shape for a in answers] == [(1, n, 64) for n in lengths]
    model = runtime.repository.models[("bert", "1")]
    samples = {s.name: s.value for s in model.metrics.batch_size.collect()[0].samples}
    assert samples["modelfleet_batch_size_count"] < len(lengths), (
        "requests of different lengths in one bucket should share batches"
    )


async def test_without_padding_a_batch_holds_one_shape_and_no_request_fails(
    start_runtime: StartRuntime,
) -> None:
    """The issue's reproduction: eight concurrent requests of lengths 5..30 to a
    [-1, -1] INT64 model with a 20 ms delay got six 500s."""
    config = tiny_model(
        "enc", "sequence_sum",
        inputs=[{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}],
        outputs=[{"name": "total", "datatype": "FP32", "shape": [-1, 1]},
                 {"name": "tokens", "datatype": "FP32", "shape": [-1, -1]}],
        batching={"max_batch_size": 16, "max_queue_delay_ms": 20},
    )  # fmt: skip
    client, _ = await start_runtime([config])

    async def one(n: int) -> None:
        ids = list(range(1, n + 1))
        body = {"inputs": [{"name": "ids", "shape": [1, n], "datatype": "INT64", "data": ids}]}
        resp = await client.post("/v2/models/enc/infer", json=body)
        doc = await resp.json()
        assert resp.status == 200, doc
        assert doc["outputs"][0]["data"] == [float(sum(ids))]
        assert doc["outputs"][1]["shape"] == [1, n]

    await asyncio.gather(*(one(n) for n in [5, 7, 5, 9, 12, 5, 7, 30] * 3))


async def test_padding_refuses_a_sequence_longer_than_the_largest_bucket_and_unequal_inputs(
    start_runtime: StartRuntime,
) -> None:
    client, _ = await start_runtime([zoo_config("bert", batching=zoo.padded("bert"))])
    ids, mask = sequence(129, 0)
    body = {"inputs": [tensor("ids", ids, "INT64"), tensor("mask", mask, "INT64")]}
    resp = await client.post("/v2/models/bert/infer", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"] == (
        "input 'ids' has length 129 in dimension 1, longer than the largest padding "
        "bucket of model 'bert' (128)"
    )
    body = {"inputs": [tensor("ids", ids[:, :10], "INT64"), tensor("mask", mask[:, :12], "INT64")]}
    resp = await client.post("/v2/models/bert/infer", json=body)
    assert resp.status == 400
    assert "must agree on dimension 1; got ids: 10, mask: 12" in (await resp.json())["error"]


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_resnet_images_as_binary_tensors_answer_like_the_unbatched_model(
    start_runtime: StartRuntime, model_store: Path, executor: str
) -> None:
    client, _ = await start_runtime([zoo_config("resnet")], executor=executor)
    images = np.random.default_rng(3).standard_normal((12, 1, 3, 224, 224)).astype(np.float32)

    async def one(x: np.ndarray) -> np.ndarray:
        body, headers = binary_body([("image", x, "FP32")])
        resp = await client.post("/v2/models/resnet/infer", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return binary_outputs(await resp.read(), resp.headers[HEADER])["logits"]

    answers = await asyncio.gather(*(one(x) for x in images))
    module = reference("resnet", model_store)
    with torch.inference_mode():
        for x, got in zip(images, answers, strict=True):
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_several_named_inputs_and_a_dict_of_outputs_keep_their_types(
    start_runtime: StartRuntime, model_store: Path, executor: str
) -> None:
    client, _ = await start_runtime([zoo_config("multi_io")], executor=executor)
    rng = np.random.default_rng(4)
    cases = [
        (
            rng.standard_normal((rows, 8)).astype(np.float32),
            rng.integers(-5, 5, (rows, 4)).astype(np.int32),
            rng.standard_normal((rows, 1)),
        )
        for rows in (1, 3, 2, 1, 5, 1, 4)
    ]

    async def one(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
        body, headers = binary_body([("a", a, "FP32"), ("b", b, "INT32"), ("scale", scale, "FP64")])
        resp = await client.post("/v2/models/multi_io/infer", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return binary_outputs(await resp.read(), resp.headers[HEADER])

    answers = await asyncio.gather(*(one(*c) for c in cases))
    module = reference("multi_io", model_store)
    with torch.inference_mode():
        for (a, b, scale), got in zip(cases, answers, strict=True):
            want = module(*(torch.from_numpy(v) for v in (a, b, scale)))
            assert got["count"].dtype == np.int64 and got["scaled"].dtype == np.float64
            for key in ("sum", "count", "scaled"):
                np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_bytes_input_as_json_strings_and_as_tritons_binary_form(
    start_runtime: StartRuntime, model_store: Path, executor: str
) -> None:
    import tritonclient.http.aio as triton

    client, _ = await start_runtime([zoo_config("text_hash")], executor=executor)
    texts = ["the quick brown fox", "", "café au lait", "a b c d e f g", "fox"] * 3
    module = reference("text_hash", model_store)
    with torch.inference_mode():
        expected = [
            module(np.array([[t.encode()]], dtype=object)).numpy().reshape(-1) for t in texts
        ]

    async def as_json(text: str) -> list[float]:
        body = {"inputs": [tensor("text", np.array([[text.encode()]], dtype=object), "BYTES")]}
        resp = await client.post("/v2/models/text_hash/infer", json=body)
        doc = await resp.json()
        assert resp.status == 200, doc
        return list(doc["outputs"][0]["data"])

    got = await asyncio.gather(*(as_json(t) for t in texts))
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-6)

    server = client.server
    triton_client = triton.InferenceServerClient(f"{server.host}:{server.port}")
    try:

        async def as_binary(text: str) -> np.ndarray:
            x = triton.InferInput("text", [1, 1], "BYTES")
            x.set_data_from_numpy(np.array([[text.encode()]], dtype=object), binary_data=True)
            result = await triton_client.infer("text_hash", [x])
            out = result.as_numpy("embedding")
            assert out is not None
            return out.reshape(-1)

        got_binary = await asyncio.gather(*(as_binary(t) for t in texts))
    finally:
        await triton_client.close()
    np.testing.assert_allclose(np.array(got_binary), np.array(expected), rtol=1e-5, atol=1e-6)


async def test_a_batch_over_10_mb_crosses_the_forward_process_while_another_is_in_flight(
    start_runtime: StartRuntime,
) -> None:
    """16 images of 3x256x256 FP32 are 12.6 MB each way, 60 times the socket's buffer."""
    shape = [-1, 3, 256, 256]
    config = tiny_model(
        "ident", "identity",
        inputs=[{"name": "x", "datatype": "FP32", "shape": shape}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": shape}],
        batching={"max_batch_size": 16, "max_queue_delay_ms": 5}, warmup={"enabled": False},
    )  # fmt: skip
    client, runtime = await start_runtime([config], executor="process", max_body_bytes=64 << 20)
    x = np.random.default_rng(0).standard_normal((16, 3, 256, 256)).astype(np.float32)
    assert x.nbytes > 10 * 1024 * 1024

    async def one(i: int) -> None:
        body, headers = binary_body([("x", x + i, "FP32")])
        resp = await client.post("/v2/models/ident/infer", data=body, headers=headers)
        assert resp.status == 200, await resp.text()
        y = binary_outputs(await resp.read(), resp.headers[HEADER])["y"]
        np.testing.assert_array_equal(y, x + i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert runtime.forward_process_failure() is None
