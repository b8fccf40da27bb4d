"""The per-model queue: bounds, batching rule, priority order, deadlines (fake time)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.runtime.batcher import EXPIRED, QUEUED, RUNNING, ModelQueue, Pending
from modelfleet.runtime.config import Batching
from modelfleet.serving.errors import Unavailable


def make_queue(
    max_batch: int = 4, delay_ms: float = 10, max_size: int = 8, eager: bool = False
) -> ModelQueue:
    return ModelQueue(
        name="m",
        version="1",
        priority=0,
        batching=Batching(max_batch_size=max_batch, max_queue_delay_ms=delay_ms, eager=eager),
        max_size=max_size,
    )


def item(
    t: float, *, rows: int = 1, level: int = 5, deadline: float = 100.0, tag: str = ""
) -> Pending:
    return Pending(payload=tag, rows=rows, level=level, enqueued_at=t, deadline=deadline)


def test_empty_queue_has_nothing_to_dispatch() -> None:
    assert make_queue().ready_at(0.0) is None


def test_partial_batch_waits_max_queue_delay_from_the_oldest_request() -> None:
    q = make_queue(delay_ms=10)
    q.push(item(1.000))
    q.push(item(1.005))
    assert q.ready_at(1.006) == pytest.approx(1.010)


def test_eager_batching_runs_at_once_unless_more_requests_are_arriving() -> None:
    q = make_queue(delay_ms=10, eager=True)
    q.push(item(1.000))
    assert q.ready_at(1.001) == 1.001
    q.arriving = 1  # another request for this model is being received
    assert q.ready_at(1.001) == pytest.approx(1.010)


def test_full_batch_is_ready_at_once() -> None:
    q = make_queue(max_batch=2, delay_ms=1000)
    q.push(item(1.0))
    q.push(item(1.0))
    assert q.ready_at(1.0) == 1.0


def test_full_queue_rejects_with_503_and_keeps_earlier_requests() -> None:
    q = make_queue(max_size=2)
    first, second = item(0, tag="a"), item(0, tag="b")
    q.push(first)
    q.push(second)
    with pytest.raises(Unavailable, match="queue of model 'm' version '1' is full") as exc:
        q.push(item(0, tag="c"))
    assert exc.value.status == 503
    batch, _ = q.take_batch(0.5)
    assert [p.payload for p in batch] == ["a", "b"]


def test_requests_on_their_way_take_the_free_places_of_the_queue() -> None:
    q = make_queue(max_size=3)
    q.push(item(0, level=5, tag="queued"))
    assert not q.would_refuse(5, inbound=1)
    assert q.would_refuse(5, inbound=2), "two let in take the two free places"
    assert not q.would_refuse(1, inbound=2), "a higher level can still displace the low one"


def test_full_queue_lets_a_higher_priority_request_displace_the_lowest() -> None:
    q = make_queue(max_size=3)
    for tag, level in [("low-old", 5), ("mid", 3), ("low-new", 5)]:
        q.push(item(0, level=level, tag=tag))
    assert q.would_refuse(5) and not q.would_refuse(1)
    displaced = q.push(item(0, level=1, tag="urgent"))
    assert displaced is not None and displaced.payload == "low-new" and displaced.state == "shed"
    with pytest.raises(Unavailable):
        q.push(item(0, level=5, tag="another-low"))
    batch, _ = q.take_batch(0)
    assert [p.payload for p in batch] == ["urgent", "mid", "low-old"]


def test_batch_takes_higher_priority_levels_first_then_arrival_order() -> None:
    q = make_queue(max_batch=3)
    for tag, level in [("low1", 5), ("high1", 1), ("low2", 5), ("high2", 1)]:
        q.push(item(0, level=level, tag=tag))
    batch, _ = q.take_batch(0.0)
    assert [p.payload for p in batch] == ["high1", "high2", "low1"]
    assert all(p.state == RUNNING for p in batch)
    assert len(q) == 1


def test_batch_never_exceeds_max_batch_size_in_rows() -> None:
    q = make_queue(max_batch=4)
    q.push(item(0, rows=3, tag="a"))
    q.push(item(0, rows=2, tag="b"))
    batch, _ = q.take_batch(0.0)
    assert [p.payload for p in batch] == ["a"]
    batch, _ = q.take_batch(0.0)
    assert [p.payload for p in batch] == ["b"]


def test_request_past_its_deadline_is_never_executed() -> None:
    q = make_queue()
    late = item(0, deadline=1.0, tag="late")
    q.push(late)
    q.push(item(0, deadline=9.0, tag="ok"))
    batch, expired = q.take_batch(2.0)
    assert [p.payload for p in batch] == ["ok"]
    assert expired == [late] and late.state == EXPIRED


def test_expire_frees_the_slot_and_is_refused_once_running() -> None:
    q = make_queue(max_size=1)
    waiting = item(0)
    q.push(waiting)
    assert q.expire(waiting)
    assert len(q) == 0 and q.ready_at(0) is None
    q.push(running := item(0))
    q.take_batch(0)
    assert running.state == RUNNING
    assert not q.expire(running)


def test_oldest_is_found_across_levels() -> None:
    q = make_queue(delay_ms=10)
    q.push(item(1.0, level=5))
    q.push(item(2.0, level=1))
    assert q.ready_at(2.0) == pytest.approx(1.010)
    assert q.head() is not None and q.head().level == 1  # type: ignore[union-attr]
    assert q.oldest() is not None and q.oldest().state == QUEUED  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "take", "expire"]), st.integers(1, 6), st.integers(1, 3)
        ),
        max_size=40,
    )
)
def test_would_refuse_says_exactly_whether_a_push_of_that_level_would_be_refused(
    steps: list[tuple[str, int, int]],
) -> None:
    """``would_refuse`` (asked before a body is read, from the rows kept per level)
    agrees with ``push`` itself at every level, whatever came and went before."""
    q = make_queue(max_batch=3, max_size=5)
    queued: list[Pending] = []
    for op, level, rows in steps:
        if op == "push" and not q.would_refuse(level):
            queued.append(item(0, level=level, rows=rows))
            q.push(queued[-1])
        elif op == "take":
            q.take_batch(0)
        elif op == "expire" and queued:
            q.expire(queued[level % len(queued)])
        for probe in range(1, 7):
            trial = copy.deepcopy(q)
            try:
                trial.push(item(0, level=probe))
                refused = False
            except Unavailable:
                refused = True
            assert q.would_refuse(probe) is refused, (probe, len(q))
