"""Placement properties (hypothesis) and its speed."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.operator.placement import Demand, Pod, place

pods_st = st.lists(st.integers(1, 10), min_size=1, max_size=6).map(
    lambda budgets: [Pod(f"pod-{i}", b * 1000.0) for i, b in enumerate(budgets)]
)
demands_st = st.lists(
    st.tuples(st.integers(-5, 5), st.integers(1, 3), st.integers(1, 6)), max_size=12
).map(lambda rows: [
    Demand((f"ns/m{i}", "1"), prio, replicas, mem * 500.0) for i, (prio, replicas, mem) in enumerate(rows)
])  # fmt: skip
current_st = st.dictionaries(st.integers(0, 11), st.sets(st.integers(0, 5), max_size=3), max_size=8)


def as_current(raw: dict[int, set[int]]) -> dict[tuple[str, str], list[str]]:
    return {(f"ns/m{k}", "1"): [f"pod-{p}" for p in pods] for k, pods in raw.items()}


@given(pods_st, demands_st, current_st)
@settings(max_examples=300, deadline=None)
def test_budgets_hold_and_replicas_are_on_distinct_pods(pods, demands, raw) -> None:  # type: ignore[no-untyped-def]
    result = place(pods, demands, as_current(raw))
    by_key = {d.key: d for d in demands}
    for pod in pods:
        used = sum(by_key[k].memory_mb for k, where in result.pods_of.items() if pod.name in where)
        assert used <= pod.budget_mb + 1e-6
    for key, where in result.pods_of.items():
        assert len(where) == len(set(where)) <= by_key[key].replicas


@given(pods_st, demands_st, current_st)
@settings(max_examples=200, deadline=None)
def test_same_input_same_output_whatever_the_order(pods, demands, raw) -> None:  # type: ignore[no-untyped-def]
    current = as_current(raw)
    first = place(pods, demands, current)
    shuffled = list(reversed(demands))
    again = place(list(reversed(pods)), shuffled, dict(reversed(list(current.items()))))
    assert first.pods_of == again.pods_of and first.unplaced == again.unplaced


@given(pods_st, demands_st, current_st)
@settings(max_examples=200, deadline=None)
def test_placing_again_from_its_own_result_changes_nothing(pods, demands, raw) -> None:  # type: ignore[no-untyped-def]
    first = place(pods, demands, as_current(raw))
    second = place(pods, demands, first.pods_of)
    assert second.pods_of == first.pods_of
    assert not second.evicted


@given(pods_st, demands_st, current_st)
@settings(max_examples=300, deadline=None)
def test_an_unplaced_version_could_not_fit_even_by_evicting_all_lower_priority(
    pods, demands, raw
) -> None:  # type: ignore[no-untyped-def]
    result = place(pods, demands, as_current(raw))
    by_key = {d.key: d for d in demands}
    for key in result.unplaced:
        demand = by_key[key]
        for pod in pods:
            if pod.name in result.pods_of[key]:
                continue
            held_by_higher_or_equal = sum(
                by_key[k].memory_mb for k, where in result.pods_of.items()
                if pod.name in where and by_key[k].priority >= demand.priority
            )  # fmt: skip
            assert pod.budget_mb - held_by_higher_or_equal < demand.memory_mb


@given(pods_st, demands_st, current_st)
@settings(max_examples=200, deadline=None)
def test_evictions_only_benefit_strictly_higher_priority(pods, demands, raw) -> None:  # type: ignore[no-untyped-def]
    result = place(pods, demands, as_current(raw))
    by_key = {d.key: d for d in demands}
    for victim, winner in result.evicted.items():
        assert by_key[winner].priority > by_key[victim].priority


def test_a_high_priority_model_evicts_a_low_one_and_the_reason_names_it() -> None:
    pods = [Pod("pod-0", 1000)]
    low = Demand(("ns/low", "1"), 0, 1, 800)
    high = Demand(("ns/high", "1"), 100, 1, 800)
    first = place(pods, [low])
    assert first.pods_of[low.key] == ["pod-0"]
    second = place(pods, [low, high], first.pods_of)
    assert second.pods_of == {high.key: ["pod-0"], low.key: []}
    assert "evicted by ns/high version 1 (priority 100)" in second.unplaced[low.key]
    third = place(pods, [low], second.pods_of)  # the high one is deleted: the low one returns
    assert third.pods_of[low.key] == ["pod-0"] and not third.unplaced


def test_existing_placements_are_kept_rather_than_repacked() -> None:
    pods = [Pod("pod-0", 1000), Pod("pod-1", 1000)]
    demand = Demand(("ns/m", "1"), 0, 1, 100)
    assert place(pods, [demand], {demand.key: ["pod-1"]}).pods_of[demand.key] == ["pod-1"]


def test_placing_1000_versions_onto_200_pods_takes_well_under_a_second() -> None:
    rng = random.Random(0)
    pods = [Pod(f"pod-{i:03d}", 16_000) for i in range(200)]
    demands = [
        Demand(
            (f"ns/model-{i}", "1"),
            rng.randint(-10, 10),
            rng.randint(1, 3),
            rng.choice([500, 1000, 2000, 4000]),
        )
        for i in range(1000)
    ]
    started = time.perf_counter()
    result = place(pods, demands)
    elapsed = time.perf_counter() - started
    placed = sum(len(v) for v in result.pods_of.values())
    assert placed > 1000
    assert elapsed < 0.5, f"placement took {elapsed:.3f} s"
