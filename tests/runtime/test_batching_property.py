"""Property: whatever the lengths, concurrency and priorities of the traffic, a
served sequence model answers every valid request, each exactly as its own
unbatched forward pass (real runtime processes, both executors, both batching modes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfleet.runtime import zoo
from tests.runtime.test_real_models import reference, sequence, tensor, zoo_config

pytestmark = pytest.mark.integration

Request = tuple[int, int]
"""(sequence length, Triton priority: 0 is the default level, 1 the highest)."""

traffic = st.tuples(
    st.lists(st.tuples(st.integers(1, 128), st.integers(0, 3)), min_size=1, max_size=24),
    st.integers(1, 24),
)


@pytest.fixture(scope="module", params=["thread", "process"])
def bert_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                model_store: Path) -> Any:  # fmt: skip
    from tests.support.servers import RuntimeProcess

    exact = zoo_config("bert", batching={"max_batch_size": 8, "max_queue_delay_ms": 3})
    padded = zoo_config("bert", served_as="bertpad", batching=zoo.padded("bert"))
    tmp = tmp_path_factory.mktemp(f"bert-{request.param}")
    server = RuntimeProcess(tmp, [exact, padded], model_store, executor=request.param)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bert_module(model_store: Path) -> torch.nn.Module:
    return reference("bert", model_store)


async def _send(url: str, requests: list[Request], concurrency: int) -> list[tuple[int, Any]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int, length: int, priority: int) -> Any:
        ids, mask = sequence(length, i)
        body = {
            "inputs": [tensor("ids", ids, "INT64"), tensor("mask", mask, "INT64")],
            "parameters": {"priority": priority},
        }
        async with gate, session.post(url, json=body) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(one(session, i, n, p) for i, (n, p) in enumerate(requests)))


@pytest.mark.parametrize("model", ["bert", "bertpad"])
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=traffic)
def test_every_request_gets_its_unbatched_answer(
    bert_server: Any, bert_module: torch.nn.Module, model: str, case: tuple[list[Request], int]
) -> None:
    requests, concurrency = case
    url = f"{bert_server.url}/v2/models/{model}/infer"
    answers = asyncio.run(_send(url, requests, concurrency))
    with torch.inference_mode():
        for i, ((length, _), (status, doc)) in enumerate(zip(requests, answers, strict=True)):
            assert status == 200, f"length {length}: {status} {doc}"
            ids, mask = sequence(length, i)
            want = bert_module(torch.from_numpy(ids), torch.from_numpy(mask))
            got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}
            assert got["tokens"].shape == (1, length, 64)
            np.testing.assert_allclose(got["pooled"], want["pooled"].numpy(), atol=1e-4)
            np.testing.assert_allclose(got["tokens"], want["tokens"].numpy(), atol=1e-4)
