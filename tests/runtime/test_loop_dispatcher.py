"""``executor: process``: the event loop schedules batches into the forward process.

A fake forward process stands in for the child: it records what it was sent
and answers when a test says so, so that the pipeline's state is exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from modelfleet.runtime.batcher import Pending
from modelfleet.runtime.config import ModelConfig
from modelfleet.runtime.errors import ForwardProcessDied
from modelfleet.runtime.forward_process import RemoteModel
from modelfleet.runtime.hosted import HostedModel, State
from modelfleet.runtime.loop_dispatcher import LoopDispatcher
from modelfleet.runtime.metrics import RuntimeMetrics
from modelfleet.runtime.protocol import Array
from modelfleet.serving.errors import Unavailable
from tests.runtime.conftest import mlp_config

Done = Any


class FakeProcess:
    """Two pipeline slots, answers on demand (each output row = input row's first 4 x 2)."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.sent: list[tuple[int, list[Array], Done]] = []
        self.express: list[tuple[int, list[Array], Done]] = []
        """Batches sent down the express lane (one at a time)."""
        self.died: str | None = None
        self.arrived = asyncio.Event()

    def has_room(self) -> bool:
        return self.died is not None or len(self.sent) < self.depth

    def busy(self) -> bool:
        return self.died is None and bool(self.sent)

    def express_free(self) -> bool:
        return self.died is None and not self.express

    def submit(
        self, handle: int, arrays: Sequence[Array], done: Done, *, express: bool = False
    ) -> None:
        if self.died is not None:
            done(None, ForwardProcessDied(self.died), 0.0)
            return
        assert not (express and self.express), "a second express batch in flight"
        (self.express if express else self.sent).append((handle, list(arrays), done))
        self.arrived.set()

    def answer(self, express: bool = False) -> None:
        _, arrays, done = (self.express if express else self.sent).pop(0)
        done([arrays[0][:, :4] * 2], None, 0.001)


def make(
    dispatcher: LoopDispatcher, process: FakeProcess, name: str = "mlp", **overrides: Any
) -> HostedModel:
    config = ModelConfig.model_validate(mlp_config(name=name, **overrides))
    model = HostedModel(config, dispatcher, default_level=5)
    model.module = RemoteModel(len(dispatcher.models) + 1, config.key, 0, process)  # type: ignore[arg-type]
    model.state = State.READY
    dispatcher.add(model)
    return model


def request(
    dispatcher: LoopDispatcher,
    model: HostedModel,
    value: float,
    *,
    level: int = 5,
    budget_s: float = 30.0,
) -> Pending:
    now = time.monotonic()
    item = Pending(
        payload=[np.full((1, 16), value, dtype=np.float32)], rows=1, level=level,
        enqueued_at=now, deadline=now + budget_s,
        future=asyncio.get_running_loop().create_future(),
    )  # fmt: skip
    dispatcher.submit(model, item)
    return item


@pytest.fixture
async def setup() -> tuple[LoopDispatcher, FakeProcess]:
    process = FakeProcess()
    dispatcher = LoopDispatcher(
        torch.device("cpu"),
        RuntimeMetrics(),
        aging_ms=100,
        spawn=lambda loop: process,  # type: ignore[arg-type,return-value]
    )
    dispatcher.start()
    return dispatcher, process


async def test_a_lone_request_goes_straight_to_the_forward_process(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    model = make(dispatcher, process)
    item = request(dispatcher, model, 1.0)
    # No loop iteration, no thread: it is in the pipe when submit returns.
    assert len(process.sent) == 1 and process.sent[0][1][0].shape == (1, 16)
    process.answer()
    outputs = await item.future
    np.testing.assert_array_equal(outputs[0], np.full((1, 4), 2.0, dtype=np.float32))


async def test_requests_collect_while_the_pipeline_is_full_and_go_as_one_batch(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    model = make(dispatcher, process, batching={"max_batch_size": 4, "max_queue_delay_ms": 50})
    first = [request(dispatcher, model, v) for v in (1.0, 2.0)]
    assert [a[0].shape[0] for _, a, _ in process.sent] == [1, 1]  # both slots taken
    waiting = [request(dispatcher, model, float(v)) for v in range(3, 9)]
    assert len(process.sent) == 2 and len(model.queue) == 6
    process.answer()  # a slot frees: the next batch is the 4 oldest waiting (max_batch_size)
    assert [a[0].shape[0] for _, a, _ in process.sent] == [1, 4]
    assert [float(r[0]) for r in process.sent[1][1][0]] == [3.0, 4.0, 5.0, 6.0]
    while process.sent:
        process.answer()
    for item, value in zip(first + waiting, range(1, 9), strict=True):
        rows = (await item.future)[0]
        np.testing.assert_array_equal(rows, np.full((1, 4), 2.0 * value, dtype=np.float32))


async def test_a_batch_that_is_not_ready_goes_when_its_queue_delay_runs_out(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    model = make(
        dispatcher, process,
        batching={"max_batch_size": 8, "max_queue_delay_ms": 40, "eager": False},
    )  # fmt: skip
    started = time.monotonic()
    request(dispatcher, model, 1.0)
    request(dispatcher, model, 2.0)
    assert process.sent == []  # not full, not eager: waits for more
    await asyncio.wait_for(process.arrived.wait(), timeout=1.0)
    waited = time.monotonic() - started
    assert 0.035 <= waited < 0.5, f"dispatched after {waited * 1000:.1f} ms"
    assert process.sent[0][1][0].shape[0] == 2


async def test_a_freed_slot_goes_to_the_higher_priority_request(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    low = make(dispatcher, process, name="low")
    high = make(dispatcher, process, name="high")
    request(dispatcher, low, 1.0)
    request(dispatcher, low, 2.0)
    request(dispatcher, low, 3.0, level=5)
    request(dispatcher, high, 4.0, level=1)
    process.answer()
    handle, arrays, _ = process.sent[-1]
    assert handle == 2 and float(arrays[0][0, 0]) == 4.0  # high, although it came last


async def test_the_second_slot_stays_free_while_a_higher_priority_model_is_active(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    """A low batch runs; the next low one waits in the queue, not in the pipe, while the
    high model has requests arriving: the high request then goes in right behind the
    running batch. Once the high model is quiet, both slots fill again."""
    dispatcher, process = setup
    low = make(dispatcher, process, name="low", priority=10, batching={"max_batch_size": 1})
    high = make(dispatcher, process, name="high", priority=100)
    now = time.monotonic()
    for i in range(5):  # the high model's recent arrivals: several a second
        high.arrivals.add(5, 1, now - i * 0.1)
    request(dispatcher, low, 1.0)
    request(dispatcher, low, 2.0)
    assert [h for h, _, _ in process.sent] == [1] and len(low.queue) == 1
    request(dispatcher, high, 3.0)
    assert [h for h, _, _ in process.sent] == [1, 2]  # the high one, behind the running batch
    process.answer()
    process.answer()
    assert [h for h, _, _ in process.sent] == [1]  # the waiting low batch, alone again
    quiet = LoopDispatcher(
        torch.device("cpu"), RuntimeMetrics(), aging_ms=100,
        spawn=lambda loop: FakeProcess(),  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    quiet.start()
    assert isinstance(quiet.process, FakeProcess)
    low2 = make(quiet, quiet.process, name="low", priority=10, batching={"max_batch_size": 1})
    make(quiet, quiet.process, name="high", priority=100)
    request(quiet, low2, 1.0)
    request(quiet, low2, 2.0)
    assert len(quiet.process.sent) == 2  # no higher model active: both slots


async def test_a_request_past_its_deadline_in_the_queue_is_answered_503_and_never_run(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    model = make(dispatcher, process)
    request(dispatcher, model, 1.0)
    request(dispatcher, model, 2.0)
    late = request(dispatcher, model, 3.0, budget_s=0.0)
    process.answer()
    with pytest.raises(Unavailable):
        await late.future
    assert all(float(a[0][0, 0]) != 3.0 for _, a, _ in process.sent)


async def test_a_dead_forward_process_fails_every_queued_request_with_500(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup
    model = make(dispatcher, process, batching={"max_batch_size": 1})
    items = [request(dispatcher, model, float(v)) for v in range(50)]
    process.died = "the forward process (pid 1) is gone (killed by signal 9)"
    process.answer()  # its slot frees: the 48 queued fail one by one, without recursion
    for item in items[2:]:
        with pytest.raises(ForwardProcessDied, match="killed by signal 9"):
            await item.future
    assert len(model.queue) == 0


def express_dispatcher() -> tuple[LoopDispatcher, FakeProcess]:
    """A started dispatcher with the express lane, no aging, over a fake process."""
    process = FakeProcess()
    dispatcher = LoopDispatcher(
        torch.device("cpu"), RuntimeMetrics(), aging_ms=0, express=True,
        spawn=lambda loop: process,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    dispatcher.start()
    return dispatcher, process


async def test_a_strictly_higher_class_takes_the_express_lane_beside_the_running_batch() -> None:
    """With ``express``: a high batch goes down the express lane at once, even with both
    main slots taken; one at a time; an equal class waits its turn on the main lane."""
    dispatcher, process = express_dispatcher()
    low = make(dispatcher, process, name="low", priority=10, batching={"max_batch_size": 1})
    peer = make(dispatcher, process, name="peer", priority=10, batching={"max_batch_size": 1})
    high = make(dispatcher, process, name="high", priority=100, batching={"max_batch_size": 1})
    lows = [request(dispatcher, low, v) for v in (1.0, 2.0)]
    assert [h for h, _, _ in process.sent] == [1, 1] and not process.express
    request(dispatcher, peer, 3.0)
    assert not process.express and len(peer.queue) == 1  # equal class: it waits
    first = request(dispatcher, high, 4.0)
    assert [h for h, _, _ in process.express] == [3]  # beside the running low batch
    second = request(dispatcher, high, 5.0)
    assert len(process.express) == 1 and len(high.queue) == 1  # one express batch at a time
    process.answer(express=True)
    np.testing.assert_array_equal((await first.future)[0], np.full((1, 4), 8.0, np.float32))
    assert [float(a[0][0, 0]) for _, a, _ in process.express] == [5.0]  # the next one
    process.answer(express=True)
    await second.future
    process.answer()  # the running low batch ends: the main lane moves on
    assert (await lows[0].future)[0][0, 0] == 2.0
    assert [h for h, _, _ in process.sent] == [1, 2]  # the second low, then the peer
    assert not process.express


async def test_an_urgent_request_takes_the_express_lane_without_the_rows_behind_it() -> None:
    """Triton's priority 1 beside a running batch of the same model: its express batch
    holds the urgent rows only; the default-level rows queued with it wait for the
    main lane, as they would have without it."""
    dispatcher, process = express_dispatcher()
    model = make(dispatcher, process, name="cnn", batching={"max_batch_size": 8})
    request(dispatcher, model, 1.0)  # runs; the next ones queue behind it
    request(dispatcher, model, 2.0)  # the second slot
    waiting = [request(dispatcher, model, v) for v in (3.0, 4.0)]
    assert len(process.sent) == 2 and len(model.queue) == 2
    urgent = request(dispatcher, model, 9.0, level=1)
    assert [[float(x) for x in a[0][:, 0]] for _, a, _ in process.express] == [[9.0]]
    process.answer(express=True)
    assert (await urgent.future)[0][0, 0] == 18.0
    assert len(model.queue) == 2 and not any(w.future.done() for w in waiting)


async def test_without_the_express_lane_a_high_batch_waits_on_the_main_lane(
    setup: tuple[LoopDispatcher, FakeProcess],
) -> None:
    dispatcher, process = setup  # express off (the constructor's default)
    low = make(dispatcher, process, name="low", priority=10, batching={"max_batch_size": 1})
    high = make(dispatcher, process, name="high", priority=100)
    request(dispatcher, low, 1.0)
    request(dispatcher, high, 2.0)
    assert not process.express and [h for h, _, _ in process.sent] == [1, 2]


async def test_with_the_express_lane_both_slots_stay_filled_while_a_higher_model_is_active() -> (
    None
):
    """With ``express``, a lower model's next batch waits in the pipe even while a
    higher model has requests arriving (the child does not idle between two of its
    batches); the high requests go down the express lane, and while it is busy the
    next one waits for it, not in a main slot behind a lower batch."""
    dispatcher, process = express_dispatcher()
    low = make(dispatcher, process, name="low", priority=10, batching={"max_batch_size": 1})
    high = make(dispatcher, process, name="high", priority=100, batching={"max_batch_size": 1})
    now = time.monotonic()
    for i in range(5):  # the high model's recent arrivals: several a second
        high.arrivals.add(5, 1, now - i * 0.1)
    assert dispatcher.higher_active(low, now)
    lows = [request(dispatcher, low, v) for v in (1.0, 2.0, 3.0)]
    assert [h for h, _, _ in process.sent] == [1, 1] and len(low.queue) == 1  # both slots
    first = request(dispatcher, high, 4.0)
    assert [h for h, _, _ in process.express] == [2]
    second = request(dispatcher, high, 5.0)
    assert len(high.queue) == 1  # the express lane is busy: it waits for it
    process.answer()  # a main slot frees while the express batch still runs
    assert [float(a[0][0, 0]) for _, a, _ in process.sent] == [2.0, 3.0]  # not the high one
    assert len(high.queue) == 1
    process.answer(express=True)
    await first.future
    assert [float(a[0][0, 0]) for _, a, _ in process.express] == [5.0]
    process.answer(express=True)
    assert (await second.future)[0][0, 0] == 10.0
    while process.sent:
        process.answer()
    assert [(await item.future)[0][0, 0] for item in lows] == [2.0, 4.0, 6.0]
