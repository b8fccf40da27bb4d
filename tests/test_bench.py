"""The benchmark's ceiling: what every served ratio is divided by."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench.runtime_bench import raw_forward, request_body


def test_the_ceiling_covers_every_batch_size_up_to_32_whatever_the_served_maximum(
    model_store: Path,
) -> None:
    by_bs = raw_forward(model_store, "cnn", seconds=0.01, rounds=1)
    assert list(by_bs) == [1, 2, 4, 8, 16, 32]
    assert all(rate > 0 for rate in by_bs.values())


def test_a_request_can_carry_several_rows_in_either_encoding() -> None:
    for encoding in ("json", "binary"):
        body, headers, x = request_body("cnn", encoding, np.random.default_rng(0), rows=16)
        assert x.shape == (16, 1, 28, 28)
        head = body[: int(headers.get("Inference-Header-Content-Length", len(body)))]
        entry = json.loads(head)["inputs"][0]
        assert entry["shape"] == [16, 1, 28, 28]
        if encoding == "binary":
            assert body[len(head) :] == x.tobytes()
        else:
            assert entry["data"] == x.reshape(-1).tolist()


def test_each_served_window_is_divided_by_the_mean_of_the_ceilings_beside_it() -> None:
    from bench.ceiling import paired_ratios

    # A host that halves its speed in the middle: the window measured then is judged
    # against the slow ceilings around it, not against the fast start.
    assert paired_ratios([800, 400, 800], [1000, 1000, 500, 1000]) == [0.8, 0.4 / 0.75, 0.8 / 0.75]


def test_paired_ratios_refuse_windows_without_a_ceiling_on_each_side() -> None:
    import pytest

    from bench.ceiling import paired_ratios

    with pytest.raises(ValueError, match="3 served windows need 4 ceiling windows"):
        paired_ratios([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="measured no rows"):
        paired_ratios([1], [0, 1])


def test_batches_are_consecutive_images_wrapping_around() -> None:
    import torch

    from bench.ceiling import batches_of

    images = torch.arange(5.0).reshape(5, 1)
    got = [b.flatten().tolist() for b in batches_of(images, 2)]
    assert got == [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]
    assert [b.flatten().tolist() for b in batches_of(images, 3, count=2)] == [[0, 1, 2], [3, 4, 0]]


def test_the_ceiling_cycles_through_its_images_and_refuses_the_wrong_shape(
    model_store: Path,
) -> None:
    import pytest
    import torch

    from bench.ceiling import Ceiling, rows_per_second
    from bench.runtime_bench import model_config
    from modelfleet.runtime.config import ModelConfig

    seen: list[float] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(float(x[0, 0, 0, 0]))
            return x

    config = ModelConfig.model_validate(model_config("cnn"))
    images = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 1, 28, 28).contiguous()
    ceiling = Ceiling(config, [Recorder()], images=images)
    assert rows_per_second(ceiling.modules[0], ceiling.batches(1), 0.01) > 0
    assert len(seen) > 6
    assert seen[:6] == [0, 1, 0, 1, 2, 0]  # 2 untimed passes, then every image in turn
    with pytest.raises(ValueError, match=r"expected \[N >= 1, 1, 28, 28\]"):
        Ceiling(config, [Recorder()], images=torch.zeros(4, 28, 28))


def test_requests_carry_the_images_in_turn_with_shared_headers() -> None:
    import torch

    from bench.runtime_bench import request_bodies, sample_images

    images = sample_images("cnn", 5)
    assert images.shape == (5, 1, 28, 28)
    assert len({images[i].numpy().tobytes() for i in range(5)}) == 5
    bodies, headers, xs = request_bodies("cnn", "binary", images, rows=2)
    assert len(bodies) == 5
    head = int(headers["Inference-Header-Content-Length"])
    assert bodies[2][head:] == torch.cat([images[4:], images[:1]]).numpy().tobytes()
    assert all(x.shape == (2, 1, 28, 28) for x in xs)


async def test_the_load_generator_sends_each_body_in_turn(aiohttp_server: Any) -> None:
    from collections import Counter

    from aiohttp import web

    from bench.loadgen import closed_loop

    received: Counter[bytes] = Counter()

    async def handle(request: web.Request) -> web.Response:
        received[await request.read()] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    bodies = [b"a", b"bb", b"ccc"]
    point = await closed_loop(str(server.make_url("/")), bodies, {}, 2, 0.2, warmup_s=0.05)
    assert point.requests > 0 and point.errors == 0
    assert set(received) == set(bodies)
    assert max(received.values()) - min(received.values()) <= 1


async def test_with_reconnect_each_request_comes_on_a_connection_of_its_own(
    aiohttp_server: Any,
) -> None:
    from aiohttp import web

    from bench.loadgen import closed_loop

    peers: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    point = await closed_loop(url, b"x", {}, 2, 0.2, warmup_s=0.05, reconnect=True)
    assert point.requests > 5 and point.errors == 0
    assert len(set(peers)) == len(peers)  # every request a new client port
    peers.clear()
    await closed_loop(url, b"x", {}, 2, 0.2, warmup_s=0.05)
    assert len(set(peers)) == 2  # kept alive: the two connections carry them all


async def test_the_grpc_load_generator_sends_each_request_in_turn_and_decodes_answers() -> None:
    from collections import Counter

    import grpc
    import numpy as np

    from bench import grpc_load
    from modelfleet.api import inference_pb2 as pb

    received: Counter[str] = Counter()

    async def model_infer(body: bytes, context: Any) -> bytes:
        request = pb.ModelInferRequest.FromString(body)
        x = np.frombuffer(request.raw_input_contents[0], np.float32)
        received[str(x.tolist())] += 1
        answer = pb.ModelInferResponse(model_name=request.model_name)
        answer.outputs.add(name="y", datatype="FP32", shape=[1, x.size])
        answer.raw_output_contents.append((x * 2).tobytes())
        return answer.SerializeToString()

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(grpc_load.SERVICE, {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        specs = [{"name": "x", "datatype": "FP32"}]
        xs = [np.full((1, 3), i, np.float32) for i in range(3)]
        bodies = [grpc_load.infer_request("m", specs, [x]) for x in xs]
        target = f"127.0.0.1:{port}"
        answer = grpc_load.decode_answer(await grpc_load.infer(target, bodies[1]))
        np.testing.assert_array_equal(answer["y"], xs[1] * 2)
        point = await grpc_load.closed_loop(target, bodies, 2, 0.3, warmup_s=0.05)
    finally:
        await server.stop(0)
    assert point.requests > 0 and point.errors == 0
    assert set(received) == {str(x.reshape(-1).tolist()) for x in xs}
    assert max(received.values()) - min(received.values()) <= 2


# -- the zoo in the bench: variable-length traffic and its ceiling ----------------


def test_sentence_lengths_are_the_seeded_skewed_distribution_they_claim() -> None:
    from bench.traffic import sentence_lengths

    lengths = sentence_lengths(256)
    assert lengths.dtype == np.int64 and len(lengths) == 256
    assert (sentence_lengths(256) == lengths).all()  # fixed: the same list every run
    assert not (sentence_lengths(256, seed=1) == lengths).all()
    assert lengths.min() >= 8 and lengths.max() <= 128
    for sample in (lengths, sentence_lengths(20_000)):
        assert 22 <= np.median(sample) <= 26
        share = {b: float((sample <= b).mean()) for b in (16, 32, 64)}
        # skewed short, as the docstring says: ~1/4 within 16, ~2/3 within 32, ~95% within 64
        assert 0.2 <= share[16] <= 0.33 and 0.6 <= share[32] <= 0.75 and 0.92 <= share[64] < 1
    assert (sentence_lengths(20_000) == 128).any()  # the tail reaches the longest bucket


def test_bert_requests_are_one_sentence_each_of_the_listed_lengths() -> None:
    from bench.runtime_bench import make_traffic
    from bench.traffic import sentence_lengths

    load = make_traffic("bert")
    assert load.images is None
    assert [r[0].shape for r in load.requests] == [(1, n) for n in sentence_lengths(256)]
    for ids, mask in load.requests:
        assert ids.dtype == mask.dtype == np.int64
        assert (mask == 1).all() and ids.min() >= 1 and ids.max() < 1000
    assert all(r[0].shape == (4, r[0].shape[1]) for r in make_traffic("bert", 8, rows=4).requests)


def test_bert_bodies_are_valid_oip_with_ids_and_mask_int64_binary_and_json() -> None:
    from bench.runtime_bench import make_traffic, model_config
    from modelfleet.api.request_parameters import HEADER_LENGTH
    from modelfleet.runtime.config import ModelConfig
    from modelfleet.runtime.protocol import decode_request

    config = ModelConfig.model_validate(model_config("bert"))
    load = make_traffic("bert", 12)
    for encoding in ("binary", "json"):
        bodies, headers = load.bodies(encoding)
        assert len(bodies) == len(headers) == 12
        for body, head, (ids, mask) in zip(bodies, headers, load.requests, strict=True):
            request = decode_request(body, config.inputs, header_length=head.get(HEADER_LENGTH))
            assert [a.dtype for a in request.arrays] == [np.int64, np.int64]
            np.testing.assert_array_equal(request.arrays[0], ids)
            np.testing.assert_array_equal(request.arrays[1], mask)
            doc = json.loads(body[: int(head.get(HEADER_LENGTH, len(body)))])
            assert [(e["name"], e["datatype"]) for e in doc["inputs"]] == [
                ("ids", "INT64"), ("mask", "INT64"),
            ]  # fmt: skip
            # binary tensors both ways, as tritonclient asks when no output is named
            assert request.binary_default == (encoding == "binary")
        if encoding == "binary":  # headers of different lengths: one set per body
            assert len({h[HEADER_LENGTH] for h in headers}) > 1


def test_responses_decode_in_either_encoding() -> None:
    from bench.traffic import decode_response
    from modelfleet.runtime.config import TensorSpec
    from modelfleet.runtime.protocol import InferRequest, encode_response

    specs = [TensorSpec(name="pooled", datatype="FP32", shape=(-1, 2)),
             TensorSpec(name="n", datatype="INT64", shape=(-1, 1))]  # fmt: skip
    arrays = [np.arange(4, dtype=np.float32).reshape(2, 2), np.array([[7], [8]], np.int64)]
    for binary in (False, True):
        request = InferRequest(id=None, arrays=[], rows=2, binary_default=binary)
        body, headers = encode_response(
            model="m", version="1", request=request, specs=specs, arrays=arrays
        )
        got = decode_response(body, headers)
        assert list(got) == ["pooled", "n"]
        for want, name in zip(arrays, got, strict=True):
            assert got[name].dtype == want.dtype
            np.testing.assert_array_equal(got[name], want)


def test_the_bert_ceiling_runs_the_same_sentences_grouped_and_padded_by_bucket() -> None:
    import torch

    from bench.ceiling import Ceiling, timed_passes
    from bench.runtime_bench import make_traffic, model_config
    from bench.traffic import sentence_lengths
    from modelfleet.runtime.config import ModelConfig

    config = ModelConfig.model_validate(model_config("bert"))
    load = make_traffic("bert", 64)
    lengths = sentence_lengths(64)
    seen: list[tuple[int, int, int]] = []  # (rows, padded length, real tokens)

    class Recorder(torch.nn.Module):
        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            assert ids.shape == mask.shape and ids.dtype == mask.dtype == torch.int64
            # padding on the right: ids 0 where mask 0, real ids (>= 1) where mask 1
            assert ((ids != 0) == (mask != 0)).all()
            seen.append((ids.shape[0], ids.shape[1], int(mask.sum())))
            return ids

    ceiling = Ceiling(config, [Recorder()], **load.ceiling_inputs())
    buckets = [next(b for b in (16, 32, 64, 128) if b >= n) for n in lengths]
    assert ceiling.request_groups == buckets
    assert ceiling.weights == pytest.approx({b: buckets.count(b) / 64 for b in set(buckets)})
    # the pool of a bucket holds its requests, in order, padded to the bucket
    pool_ids, pool_mask = ceiling.pools[32]
    mine = [i for i, b in enumerate(buckets) if b == 32]
    assert pool_ids.shape == (len(mine), 32)
    assert pool_mask.sum(1).tolist() == [lengths[i] for i in mine]
    # every batch of 8 is one bucket; the buckets take turns; every sentence is used
    batches = ceiling.batches(8)
    assert {tuple(b[0].shape) for b in batches} == {(8, b) for b in set(buckets)}
    assert [b[0].shape[1] for b in batches[:4]] == list(dict.fromkeys(buckets))
    tokens = sorted({int(m.sum()) for b in batches for m in b[1]})
    assert tokens == sorted(set(lengths.tolist()))
    # a window, however short, times every bucket at least once
    sample = timed_passes(ceiling.modules[0], batches, 0.0,
                          groups=ceiling.batch_groups(8), warmup=0)  # fmt: skip
    assert set(sample.rows) == set(buckets) and len(seen) == len(set(buckets))


def test_the_mix_rate_weights_each_bucket_by_its_share_of_the_traffic() -> None:
    from bench.ceiling import Sample, mix_rate

    sample = Sample()
    sample.add("short", 1.0, 100)  # 10 ms a row, measured over many passes
    sample.add("long", 1.0, 10)  # 100 ms a row, measured over few
    # half the rows of each: 55 ms a row, whatever share of the window each took
    assert mix_rate(sample, {"short": 0.5, "long": 0.5}) == pytest.approx(1 / 0.055)
    assert mix_rate(sample, {"short": 0.9, "long": 0.1}) == pytest.approx(1 / 0.019)
    assert mix_rate(sample) == pytest.approx(110 / 2)  # one group: rows over time
    assert sample.batch_seconds("long") == 1.0


def test_padding_overhead_counts_positions_computed_over_real_tokens() -> None:
    import torch

    from bench.ceiling import padding_overhead
    from bench.runtime_bench import model_config
    from modelfleet.runtime.config import ModelConfig

    config = ModelConfig.model_validate(model_config("bert"))

    def sentence(n: int, rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(rows, n, dtype=torch.int64), torch.ones(rows, n, dtype=torch.int64)

    # 8 -> 16, 16 -> 16, 33 -> 64 (2 rows): (16 + 16 + 128) / (8 + 16 + 66)
    got = padding_overhead(config, [sentence(8), sentence(16), sentence(33, rows=2)])
    assert got == pytest.approx(160 / 90)


def test_the_ceiling_reports_the_median_forward_of_a_request_alone() -> None:
    from bench.ceiling import Ceiling, Sample
    from bench.runtime_bench import make_traffic, model_config
    from modelfleet.runtime.config import ModelConfig

    config = ModelConfig.model_validate(model_config("bert"))
    ceiling = Ceiling(config, [], **make_traffic("bert", 64).ceiling_inputs())
    sample = Sample()
    for bucket, ms in ((16, 1), (32, 2), (64, 4), (128, 8)):
        for _ in range(3):
            sample.add(bucket, ms / 1000, 1)
    # the request list's median bucket is 32 (a quarter or so within 16, 2/3 within 32)
    assert ceiling.request_ms(sample) == pytest.approx(2.0)


def test_make_bench_measures_the_zoo_with_each_models_default_encodings() -> None:
    from bench.runtime_bench import parse_cases

    assert parse_cases(None, "mlp,cnn,bert,resnet") == [
        ("mlp", "json"), ("cnn", "json"), ("cnn", "binary"), ("cnn", "grpc"),
        ("bert", "binary"), ("resnet", "binary"),
    ]  # fmt: skip
    assert parse_cases("bert/json,cnn/binary", "mlp") == [("bert", "json"), ("cnn", "binary")]
    with pytest.raises(SystemExit, match="unknown"):
        parse_cases(None, "bert,gpt2")
    assert parse_cases("cnn/grpc", "mlp") == [("cnn", "grpc")]
    with pytest.raises(SystemExit, match="MODEL/json, MODEL/binary or MODEL/grpc"):
        parse_cases("bert/msgpack", "mlp")
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "--models mlp,cnn,bert,resnet" in makefile


async def test_the_load_generator_sends_each_body_with_its_own_headers(
    aiohttp_server: Any,
) -> None:
    from aiohttp import web

    from bench.loadgen import closed_loop

    mismatched = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal mismatched
        body = await request.read()
        mismatched += request.headers["X-Length"] != str(len(body))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    bodies = [b"a", b"bb", b"ccc"]
    headers = [{"X-Length": str(len(b))} for b in bodies]
    point = await closed_loop(str(server.make_url("/")), bodies, headers, 2, 0.2, warmup_s=0.05)
    assert point.requests > 0 and point.errors == 0 and mismatched == 0
    with pytest.raises(ValueError, match="2 header sets for 3 bodies"):
        await closed_loop(str(server.make_url("/")), bodies, headers[:2], 1, 0.1)


# -- make bench-peers: the zoo's BERT with variable lengths ------------------------


def test_the_peers_bert_requests_are_make_bench_sentences_with_their_unbatched_answers(
    model_store: Path,
) -> None:
    from bench.peers_bench import workload
    from bench.traffic import sentence_lengths

    load = workload("bert", model_store, 8)
    lengths = sentence_lengths(8)
    assert len(load.bodies) == len(load.headers) == len(load.answers) == 8
    assert load.url_path == "/v2/models/bert/infer"
    for body, answer, n in zip(load.bodies, load.answers, lengths, strict=True):
        doc = json.loads(body)
        assert [(e["name"], e["shape"]) for e in doc["inputs"]] == [
            ("ids", [1, n]), ("mask", [1, n]),
        ]  # fmt: skip
        assert answer["pooled"].shape == (1, 64)
        assert answer["tokens"].shape == (1, n, 64)  # the request's own length
    assert len({a["tokens"].shape for a in load.answers}) > 1
    assert workload("cnn", model_store).answers[0]["logits"].shape == (1, 10)


def test_an_answer_is_wrong_when_an_output_is_missing_of_another_length_or_off() -> None:
    from bench.peers_bench import mismatch

    rng = np.random.default_rng(0)
    want = {"pooled": rng.standard_normal((1, 64)).astype(np.float32),
            "tokens": rng.standard_normal((1, 9, 64)).astype(np.float32)}  # fmt: skip
    assert mismatch({k: v + 1e-7 for k, v in want.items()}, want) is None
    assert "no output 'tokens'" in (mismatch({"pooled": want["pooled"]}, want) or "")
    padded = {**want, "tokens": np.concatenate([want["tokens"], np.zeros((1, 7, 64))], axis=1)}
    assert mismatch(padded, want) == "'tokens' has shape [1, 16, 64], expected [1, 9, 64]"
    off = {**want, "pooled": want["pooled"] + 0.01}
    assert "'pooled' differs from the reference by up to 0.01" in (mismatch(off, want) or "")


def test_the_peers_padding_gives_each_sentence_its_unbatched_answer(model_store: Path) -> None:
    from bench.peers.servers.common import forward_concatenated, forward_padded, load
    from bench.peers_bench import mismatch, workload
    from bench.runtime_bench import make_traffic

    module = load("bert", str(model_store), 1)
    requests = make_traffic("bert", 6).requests
    want = workload("bert", model_store, 6).answers
    got = forward_padded(module, requests)
    assert [mismatch(g, w) for g, w in zip(got, want, strict=True)] == [None] * 6
    # as the fixed-shape servers batch: numpy refuses sentences of different lengths
    with pytest.raises(ValueError, match="must match exactly"):
        forward_concatenated(module, requests)


def test_the_bench_serves_bert_with_bucket_padding_and_probes_it_without() -> None:
    from bench.peers_bench import modelfleet_config
    from modelfleet.runtime.config import parse_document

    handled = modelfleet_config("bert", Path("/models"), 19010, 2.0, {})
    as_is = modelfleet_config("bert", Path("/models"), 19010, 2.0, {}, lengths="as-is")
    for doc in (handled, as_is):
        parse_document(doc)  # valid runtime configs
        assert doc["models"][0]["batching"]["max_batch_size"] == 16
        assert doc["models"][0]["batching"]["max_queue_delay_ms"] == 2.0
    assert handled["models"][0]["batching"]["pad"]["buckets"] == [16, 32, 64, 128]
    assert "pad" not in as_is["models"][0]["batching"]


def test_a_server_error_is_quoted_from_the_last_line_of_its_traceback(tmp_path: Path) -> None:
    from bench.peers_bench import last_error

    log = tmp_path / "ray.log"
    log.write_text(
        "INFO starting\nTraceback (most recent call last):\n"
        '  File "x.py", line 3, in infer\n    raise ValueError(msg)\n'
        "ValueError: all the input array dimensions except for the concatenation axis "
        "must match exactly\nINFO 500 POST /v2/models/bert/infer\n"
    )
    assert last_error(log) == (
        "ValueError: all the input array dimensions except for the concatenation axis "
        "must match exactly"
    )
    assert last_error(tmp_path / "absent.log") is None


async def test_the_bert_check_passes_a_padding_server_and_catches_a_wrong_one(
    model_store: Path, aiohttp_server: Any
) -> None:
    from aiohttp import web

    from bench.peers.servers.common import decode, encode, forward_padded, load
    from bench.peers_bench import verify, workload

    module = load("bert", str(model_store), 1)

    async def right(request: web.Request) -> web.Response:
        answer = forward_padded(module, [decode("bert", await request.json())])[0]
        return web.json_response(encode("bert", answer))

    async def untrimmed(request: web.Request) -> web.Response:
        # padded to 128 tokens and not cut back: the padding positions left in
        ids, mask = decode("bert", await request.json())
        answer = forward_padded(module, [(ids, mask)])[0]
        answer["tokens"] = np.pad(answer["tokens"], ((0, 0), (0, 128 - ids.shape[1]), (0, 0)))
        return web.json_response(encode("bert", answer))

    async def refusing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="Internal Server Error")

    app = web.Application()
    app.router.add_post("/right", right)
    app.router.add_post("/untrimmed", untrimmed)
    app.router.add_post("/refusing", refusing)
    server = await aiohttp_server(app)
    load_ = workload("bert", model_store, 12)
    good = await verify(str(server.make_url("/right")), load_, concurrency=4)
    assert (good.ok, good.wrong, good.refused) == (12, 0, 0)
    bad = await verify(str(server.make_url("/untrimmed")), load_, concurrency=4)
    assert bad.ok == 0 and bad.wrong == 12
    assert "'tokens' has shape [1, 128, 64], expected [1, " in (bad.first_wrong or "")
    refused = await verify(str(server.make_url("/refusing")), load_, concurrency=4)
    assert refused.refused == 12 and refused.first_refusal == "HTTP 500: Internal Server Error"
    assert "12 refused" in refused.summary()


async def test_modelfleet_serves_the_peers_bert_case_with_every_answer_right(
    model_store: Path,
) -> None:
    from aiohttp.test_utils import TestServer

    from bench.loadgen import closed_loop
    from bench.peers_bench import modelfleet_config, summarize, verify, workload
    from modelfleet.runtime.config import parse_document
    from modelfleet.runtime.runtime import Runtime
    from modelfleet.runtime.server import build_data_app

    doc = modelfleet_config("bert", model_store, 0, 2.0, {})
    runtime = Runtime(parse_document(doc))
    await runtime.start()
    server = TestServer(build_data_app(runtime))
    await server.start_server()
    try:
        load = workload("bert", model_store, 16)
        url = str(server.make_url(load.url_path))
        verdict = await verify(url, load, concurrency=8)
        assert (verdict.ok, verdict.sent) == (16, 16), verdict.summary()
        point = await closed_loop(url, load.bodies, load.headers, 4, 0.3, warmup_s=0.05)
    finally:
        await server.close()
        await runtime.close()
    summary = summarize([point], forward_ms=1.0, ceiling=1000.0)
    assert point.requests > 0 and summary["errors"] == 0
    assert summary["ratio_p99_100ms"] == pytest.approx(summary["thr_p99_100ms"] / 1000)


def test_benchmark_processes_get_every_source_folder_the_layout_has() -> None:
    """A child started by a benchmark imports each component (the gateway moved to
    its own folder once and the overload benchmark's gateway could not start)."""
    import os
    import subprocess
    import sys

    from bench.sources import pythonpath, source_folders

    assert {p.name for p in source_folders()} >= {"runtime", "gateway", "operator"}
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    probe = "import modelfleet.gateway.main, modelfleet.operator.spec, modelfleet.runtime.config"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")  # fmt: skip
    assert done.returncode == 0, done.stderr[-1000:]


def test_the_overload_requests_decode_in_the_runtime_alike_in_either_encoding() -> None:
    """``bench.overload_bench --encoding``: the same seeded tensors, JSON or binary,
    each one the runtime's decoder accepts for the bench's models."""
    from bench.overload_bench import MODELS, requests
    from modelfleet.api.request_parameters import HEADER_LENGTH
    from modelfleet.runtime.config import ModelConfig
    from modelfleet.runtime.protocol import decode_request

    for name, rows in (("cnn", 8), ("cnn", 16), ("mlp", 1)):  # 16: --low-rows 16
        spec = ModelConfig.model_validate(next(m for m in MODELS if m["name"] == name))
        decoded = {}
        for encoding in ("json", "binary"):
            bodies, headers = requests(name, rows, encoding, count=3)
            assert len(set(bodies)) == 3, "the requests should differ"
            decoded[encoding] = [
                decode_request(b, spec.inputs, header_length=headers.get(HEADER_LENGTH))
                for b in bodies
            ]
            assert all(r.rows == rows for r in decoded[encoding])
        for a, b in zip(decoded["json"], decoded["binary"], strict=True):
            np.testing.assert_array_equal(a.arrays[0], b.arrays[0])


async def test_both_load_generators_keep_their_heap_out_of_the_collector_while_they_measure(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection of the bench process (torch imported) paused it for about 100 ms
    inside a window: requests in flight looked that much slower, and the arrivals due
    meanwhile went out at once. The handler runs in the generator's process here: every
    request is served while the generator's heap is frozen (``gc.freeze`` before its
    clock starts, ``gc.unfreeze`` after). ``gc.get_freeze_count`` walks the frozen
    objects, tens of milliseconds in a test process, so it is read once a run."""
    import gc

    from aiohttp import web

    import bench.loadgen
    from bench.loadgen import closed_loop
    from bench.overload import Traffic, run_classes

    state = {"frozen": False}

    def freeze() -> None:
        gc.freeze()
        state["frozen"] = True

    def unfreeze() -> None:
        state["frozen"] = False
        gc.unfreeze()

    spy = SimpleNamespace(collect=gc.collect, freeze=freeze, unfreeze=unfreeze)
    monkeypatch.setattr(bench.loadgen, "gc", spy)
    seen_frozen: list[bool] = []
    counts: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen_frozen.append(state["frozen"])
        if not counts:
            counts.append(gc.get_freeze_count())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    point = await closed_loop(url, b"x", {}, 2, 0.5, warmup_s=0.1)
    assert point.requests > 0 and seen_frozen and all(seen_frozen), seen_frozen[:5]
    assert counts[0] > 0 and not state["frozen"] and gc.get_freeze_count() == 0
    seen_frozen.clear()
    counts.clear()
    seen = await run_classes([Traffic("low", 50.0, [b"x"], {}, url)], 0.5, warmup_s=0.1)
    assert seen["low"].ok > 0 and seen_frozen and all(seen_frozen), seen_frozen[:5]
    assert counts[0] > 0 and not state["frozen"] and gc.get_freeze_count() == 0


def test_the_overload_benchs_urgent_cnn_requests_carry_tritons_priority_1_in_either_encoding() -> (
    None
):
    """``--high cnn``: the high class is the CNN's own requests at request priority 1,
    which the runtime finds in the raw body before it decodes it (JSON or binary)."""
    import argparse

    from bench.overload_bench import high_traffic
    from modelfleet.api.request_parameters import HEADER_LENGTH, peek_parameters

    for encoding in ("json", "binary"):
        args = argparse.Namespace(high="cnn", encoding=encoding, high_rate=50.0)
        traffic = high_traffic("http://h:1", args)
        assert traffic.url == "http://h:1/v2/models/cnn/infer" and traffic.rate == 50.0
        for body in traffic.bodies:
            assert peek_parameters(body, traffic.headers.get(HEADER_LENGTH)) == (1, None)
        args.high = "mlp"
        mlp = high_traffic("http://h:1", args)
        assert mlp.url.endswith("/v2/models/mlp/infer")
        assert peek_parameters(mlp.bodies[0], mlp.headers.get(HEADER_LENGTH)) == (None, None)


def _overload_bench_refuses(*args: str) -> str:
    """Runs ``bench.overload_bench`` with ``args``; it must stop with argparse's usage
    error (exit 2) before it starts anything. Returns what it wrote to stderr."""
    import subprocess
    import sys

    from bench.sources import pythonpath

    done = subprocess.run(
        [sys.executable, "-m", "bench.overload_bench", *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": pythonpath()},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_the_overload_bench_refuses_a_low_request_larger_than_a_batch() -> None:
    """``--low-rows``: a CNN request of more rows than its ``max_batch_size`` (16) could
    never be batched; the bench says so before it starts anything."""
    for rows in ("0", "17"):
        stderr = _overload_bench_refuses("--low-rows", rows)
        assert f"--low-rows {rows}: from 1 to the CNN's max_batch_size, 16" in stderr


def test_the_overload_bench_refuses_a_reference_window_of_no_time() -> None:
    """``--reference-s``: the low class's saturation reference needs a window to count in."""
    for seconds in ("0", "-3"):
        stderr = _overload_bench_refuses(f"--reference-s={seconds}")
        assert f"--reference-s {seconds}: a number of seconds above 0" in stderr


def test_the_overload_bench_refuses_a_negative_number_of_pairs() -> None:
    stderr = _overload_bench_refuses("--pairs=-1")
    assert "--pairs -1: a number of windows, 0 or more" in stderr


def test_paired_2x_goodput_judges_each_window_by_the_references_beside_it() -> None:
    """``--pairs``: a host that slows down half-way; each 2x window is judged against the
    references just before and after it, not against the fast first one."""
    from bench.overload_bench import paired_line, paired_summary

    summary = paired_summary([180, 90, 95], [200, 200, 100, 100], [5.0, 6.0, 7.0])
    assert summary["ratios"] == [0.9, 0.6, 0.95]
    assert (summary["median"], summary["min"], summary["max"]) == (0.9, 0.6, 0.95)
    assert summary["high_p99_ms"] == [5.0, 6.0, 7.0]
    assert "3 windows" in paired_line(summary) and "median 90%, 60%-95%" in paired_line(summary)


def test_the_overload_bench_refuses_device_cpu_where_it_has_no_meaning() -> None:
    """``--device-cpu`` gives the forward process a CPU of its own: a thread executor
    has no such process, and a gateway would share that CPU."""
    for extra in (["--executors", "thread", "--no-gateway"], ["--executors", "process"]):
        stderr = _overload_bench_refuses("--device-cpu", *extra)
        assert "--device-cpu needs --executors process --no-gateway" in stderr


def test_pin_descendants_moves_every_thread_below_a_process_and_not_the_process() -> None:
    """``--device-cpu``: the runtime's forward process (a child, or a grandchild through
    a fork server) is moved to the device's CPU, every thread of it; the serving process
    itself stays where it is."""
    import subprocess
    import sys
    import time

    from bench.overload_bench import pin_descendants

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail(f"this test needs two CPUs to move a process between; it has {cpus}")
    grandchild = (
        "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
        "time.sleep(60)"
    )
    script = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        below: list[int] = []
        while time.monotonic() < deadline:
            kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            if kids and len(list(Path(f"/proc/{kids[0]}/task").iterdir())) >= 2:
                below = [int(kids[0])]
                break
            time.sleep(0.05)
        assert below, "the grandchild and its thread did not start"
        target = cpus[-1]
        assert pin_descendants(parent.pid, target) == below
        threads = [int(t.name) for t in Path(f"/proc/{below[0]}/task").iterdir()]
        assert len(threads) >= 2
        assert all(os.sched_getaffinity(t) == {target} for t in threads)
        assert os.sched_getaffinity(parent.pid) == set(cpus)
    finally:
        for pid in below:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
