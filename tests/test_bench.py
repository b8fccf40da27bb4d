"""The benchmark's ceiling: what every served ratio is divided by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

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
