"""A closed-loop OIP gRPC load generator: C callers on one HTTP/2 channel (as a
``tritonclient.grpc`` client shares one), each sends its next ``ModelInfer`` as
soon as the previous answer arrives.

The requests are serialised once (raw input contents, as tritonclient sends
them) and sent as bytes, so the generator's own cost per request is grpc's alone.
Shared by the runtime and gateway benchmarks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from bench.loadgen import Point
from modelfleet.api import inference_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
NP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def infer_request(
    model: str, specs: Sequence[Mapping[str, Any]], arrays: Sequence[np.ndarray]
) -> bytes:
    """A serialised ``ModelInferRequest`` carrying ``arrays`` as raw input contents."""
    request = pb.ModelInferRequest(model_name=model)
    for spec, x in zip(specs, arrays, strict=True):
        x = np.ascontiguousarray(x, dtype=NP_DTYPES[spec["datatype"]])
        request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def decode_answer(raw: bytes) -> dict[str, np.ndarray]:
    """The output tensors of a serialised ``ModelInferResponse``, by name."""
    response = pb.ModelInferResponse.FromString(raw)
    return {
        out.name: np.frombuffer(blob, dtype=NP_DTYPES[out.datatype]).reshape(list(out.shape))
        for out, blob in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", -1),
                         ("grpc.max_send_message_length", -1)],
    )  # fmt: skip


async def infer(target: str, body: bytes) -> bytes:
    """One ``ModelInfer`` (for checking answers before a sweep)."""
    async with channel(target) as ch:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            f"/{SERVICE}/ModelInfer"
        )
        return await call(body)


async def closed_loop(
    target: str,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
) -> Point:
    """Runs ``concurrency`` callers for ``warmup_s + duration_s``; measures the last
    part. The requests take ``bodies`` in turn across all callers."""
    if not bodies:
        raise ValueError("closed_loop needs at least one request body")
    raws = itertools.cycle(bodies)
    latencies: list[float] = []
    errors = 0
    async with channel(target) as ch:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            f"/{SERVICE}/ModelInfer"
        )
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(next(raws))
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                t1 = time.perf_counter()
                if measure_from <= t0 and t1 <= stop_at:
                    if ok:
                        latencies.append((t1 - t0) * 1000)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Point(concurrency, len(latencies), errors, duration_s, latencies)
