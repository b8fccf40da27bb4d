"""The device scheduler: request priority, then model priority, then the earliest
due answer; aging only when asked for (fake time)."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from modelfleet.runtime.batcher import ModelQueue, Pending
from modelfleet.runtime.config import Batching
from modelfleet.runtime.dispatch import Dispatch
from modelfleet.runtime.scheduler import express_level, pick, rank
from modelfleet.runtime.service import Arrivals

AGING_S = 0.1


def queue(name: str, priority: int = 0, delay_ms: float = 0) -> ModelQueue:
    return ModelQueue(
        name=name,
        version="1",
        priority=priority,
        batching=Batching(max_batch_size=4, max_queue_delay_ms=delay_ms, eager=False),
        max_size=1000,
    )


def add(q: ModelQueue, t: float, level: int = 5, due: float = 1e9, rows: int = 1) -> None:
    q.push(Pending(payload=None, rows=rows, level=level, enqueued_at=t, deadline=1e9, due=due))


def test_request_priority_wins_over_model_priority() -> None:
    important_model, other = queue("a", priority=1000), queue("b", priority=0)
    add(important_model, 0.0, level=5)
    add(other, 0.0, level=1)
    chosen, _ = pick([important_model, other], 0.0, AGING_S)
    assert chosen is other


def test_model_priority_breaks_ties_between_equal_request_levels() -> None:
    low, high = queue("low", priority=0), queue("high", priority=100)
    add(low, 0.0)
    add(high, 0.0)
    chosen, _ = pick([low, high], 0.0, AGING_S)
    assert chosen is high


def test_nothing_dispatchable_returns_the_time_to_look_again() -> None:
    q = queue("a", delay_ms=5)
    add(q, 1.0)
    chosen, wake = pick([q], 1.001, AGING_S)
    assert chosen is None and wake is not None and abs(wake - 1.005) < 1e-9


def test_aging_lets_a_waiting_low_priority_model_overtake() -> None:
    low, high = queue("low", priority=0), queue("high", priority=100)
    add(low, 0.0, level=5)
    add(high, 0.55, level=1)
    # At 0.55 the low model's oldest request waited 5.5 aging periods: level 5 -> 0.
    chosen, _ = pick([low, high], 0.55, AGING_S)
    assert chosen is low


def test_no_model_starves_under_a_constant_stream_of_high_priority_work() -> None:
    """Simulates a saturated device: each batch takes 10 ms, the high-priority
    model always has fresh requests; the low-priority one must still be served."""
    low, high = queue("low", priority=0), queue("high", priority=100)
    add(low, 0.0, level=5)
    now = 0.0
    served_low_at = None
    for _ in range(1000):
        add(high, now, level=1)
        chosen, _ = pick([low, high], now, AGING_S)
        assert chosen is not None
        chosen.take_batch(now)
        if chosen is low:
            served_low_at = now
            break
        now += 0.010
    assert served_low_at is not None and served_low_at <= 1.0


def test_without_aging_a_long_low_priority_backlog_never_overtakes_a_fresh_high_request() -> None:
    """The default: strict classes. A low model whose oldest request waited 5 s
    still goes after a high-priority model's request that just arrived."""
    low, high = queue("low", priority=10), queue("high", priority=100)
    for i in range(50):
        add(low, i * 0.1)
    add(high, 5.0)
    chosen, _ = pick([low, high], 5.0, 0.0)
    assert chosen is high


def test_within_one_priority_class_the_answer_due_first_runs_first() -> None:
    slow_objective, tight_objective = queue("batchy", priority=5), queue("chatty", priority=5)
    add(slow_objective, 0.0, due=1.0)  # arrived first, due in a second
    add(tight_objective, 0.1, due=0.12)  # arrived later, due in 20 ms
    chosen, _ = pick([slow_objective, tight_objective], 0.1, 0.0)
    assert chosen is tight_objective


def test_rows_ahead_counts_higher_levels_and_the_own_level_when_asked() -> None:
    q = queue("a")
    add(q, 0.0, level=1, rows=3)
    add(q, 0.0, level=5, rows=4)
    add(q, 0.0, level=9, rows=5)
    assert q.rows_ahead(5, inclusive=False) == 3
    assert q.rows_ahead(5, inclusive=True) == 7
    assert q.rows_ahead(1, inclusive=False) == 0
    batch, _ = q.take_batch(0.0)  # the level-1 request (3 rows) and the level-5 one do not fit
    assert [p.rows for p in batch] == [3] and q.rows_ahead(9, inclusive=True) == 9


def test_max_rows_cuts_a_batch_but_never_splits_a_request() -> None:
    q = queue("cnn")  # max_batch_size 4
    for t in range(4):
        add(q, float(t))
    batch, _ = q.take_batch(10.0, max_rows=2)
    assert [p.rows for p in batch] == [1, 1] and len(q) == 2
    big = queue("big")
    add(big, 0.0, rows=3)
    add(big, 1.0, rows=1)
    batch, _ = big.take_batch(10.0, max_rows=2)
    assert [p.rows for p in batch] == [3]  # the first request whole, alone


def yielding(models: list[Any], yield_ms: float | None = 2.5) -> Any:
    """What ``Dispatch.batch_rows`` reads of its dispatcher."""
    out = SimpleNamespace(yield_batch_s=yield_ms / 1000 if yield_ms else None, models=models)
    out.higher_active = functools.partial(Dispatch.higher_active, out)
    return out


def hosted(priority: int, per_row_s: float, arrivals: Arrivals | None = None) -> Any:
    q = queue(f"m{priority}", priority=priority)
    return SimpleNamespace(config=SimpleNamespace(priority=priority), queue=q,
                           service=SimpleNamespace(seconds_per_row=per_row_s),
                           arrivals=arrivals or Arrivals())  # fmt: skip


def test_a_lower_batch_is_cut_to_the_yield_time_while_a_higher_model_is_active() -> None:
    low, high = hosted(10, 0.0003), hosted(100, 0.0001)
    dispatch = yielding([low, high])
    # No higher-priority request arriving or queued: the batch keeps its size.
    assert Dispatch.batch_rows(dispatch, low, 0.0) is None
    high.arrivals.add(5, 50, 0.0)  # the MLP is arriving at 50 rows/s
    assert Dispatch.batch_rows(dispatch, low, 0.1) == 8  # 2.5 ms / 0.3 ms a row
    assert Dispatch.batch_rows(dispatch, high, 0.1) is None  # nothing above the MLP
    assert Dispatch.batch_rows(dispatch, low, 30.0) is None  # its arrivals died away
    add(high.queue, 30.0)  # ... but one is queued
    assert Dispatch.batch_rows(dispatch, low, 30.0) == 8
    # At least one request, whatever its time per row; off without the setting or a measurement.
    assert Dispatch.batch_rows(yielding([hosted(10, 0.01), high]), hosted(10, 0.01), 30.0) == 1
    assert Dispatch.batch_rows(yielding([low, high], None), low, 30.0) is None
    assert Dispatch.batch_rows(dispatch, hosted(10, 0.0), 30.0) is None


def test_an_express_batch_carries_only_rows_of_a_strictly_higher_class() -> None:
    """Beside a running batch of class (5, model priority 10): a request of level 1 of the
    same model goes express with the other rows of level 1 to 4, not those of level 5
    (they belong behind the running batch); a model of higher priority takes level 5
    too. The first request goes whatever its level."""
    same, higher = queue("cnn", priority=10), queue("mlp", priority=100)
    running = rank(_with(queue("cnn", priority=10), 5), 0.0, AGING_S)[:2]
    assert express_level(same, running) == 4 and express_level(higher, running) == 5
    for level in (5, 1, 5, 3, 5):
        add(same, 0.0, level=level)
    batch, _ = same.take_batch(0.0, None, express_level(same, running))
    assert [p.level for p in batch] == [1, 3]
    batch, _ = same.take_batch(0.0)  # the main lane: no cap
    assert [p.level for p in batch] == [5, 5, 5]
    add(same, 0.0, level=5)
    batch, _ = same.take_batch(0.0, None, 1)
    assert [p.level for p in batch] == [5]  # the first one goes whatever its level


def _with(q: ModelQueue, level: int) -> ModelQueue:
    add(q, 0.0, level=level)
    return q
