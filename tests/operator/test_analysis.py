"""The canary analysis judgement (pure): passes on good evidence, waits on too
little, fails on a clear regression, is not fooled by one error in twenty; the shadow
stage passes or fails on the agreement of enough mirrored answers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from modelfleet.operator.analysis import (
    Mirrored,
    ShadowThresholds,
    Thresholds,
    Window,
    fisher_greater,
    judge,
    judge_shadow,
)

LIMITS = Thresholds(min_requests=200, max_seconds=600)


def test_good_canary_with_enough_requests_passes() -> None:
    verdict = judge(Window(400, 1, 20.0), Window(4000, 8, 19.0), LIMITS, elapsed_s=5)
    assert verdict.kind == "passed"
    assert verdict.reason.startswith("AnalysisPassed: errorRate 0.2% vs 0.2% over 400 canary")


def test_too_few_requests_waits_then_holds_at_the_step_maximum() -> None:
    waiting = judge(Window(37, 0, 10.0), Window(500, 0, 10.0), LIMITS, elapsed_s=30)
    assert (waiting.kind, waiting.reason) == (
        "waiting",
        "AnalysisWaiting: 37 of 200 canary requests",
    )
    holding = judge(Window(37, 0, 10.0), Window(500, 0, 10.0), LIMITS, elapsed_s=600)
    assert holding.kind == "holding" and "not promoting without evidence" in holding.reason


def test_a_clear_error_regression_fails_with_its_figures() -> None:
    verdict = judge(Window(400, 16, 20.0), Window(4000, 8, 20.0), LIMITS, elapsed_s=5)
    assert verdict.kind == "failed"
    assert "AnalysisFailed: errorRate 4.0% vs 0.2% over 400 canary" in verdict.reason
    assert verdict.p_value is not None and verdict.p_value < 1e-6


def test_one_error_in_twenty_requests_decides_nothing() -> None:
    limits = Thresholds(min_requests=20, max_seconds=600)
    verdict = judge(Window(20, 1, 10.0), Window(1000, 0, 10.0), limits, elapsed_s=5)
    assert verdict.kind == "waiting" and "not yet significant" in verdict.reason


def test_a_three_times_slower_canary_fails_on_p99() -> None:
    verdict = judge(Window(400, 0, 60.0), Window(4000, 0, 20.0), LIMITS, elapsed_s=5)
    assert verdict.kind == "failed"
    assert "p99 60.0 ms vs 20.0 ms (3.00x, more than 1.5x)" in verdict.reason


def test_a_p99_within_the_tolerance_fails_nothing_whatever_the_ratio() -> None:
    limits = Thresholds(min_requests=200, max_seconds=600, p99_tolerance_ms=5.0)
    noise = judge(Window(400, 0, 4.9), Window(4000, 0, 3.0), limits, elapsed_s=5)
    assert noise.kind == "passed" and "p99 4.9 ms vs 3.0 ms" in noise.reason  # 1.63x, 1.9 ms
    slow = judge(Window(400, 0, 28.7), Window(4000, 0, 4.6), limits, elapsed_s=5)
    assert slow.kind == "failed" and "(6.24x, more than 1.5x)" in slow.reason


def test_fisher_matches_the_hypergeometric_tail_computed_directly() -> None:
    # 3 of 10 canary requests failed, 0 of 10 stable: P(X >= 3), X ~ Hypergeom(20, 3, 10).
    direct = sum(math.comb(10, k) * math.comb(10, 3 - k) for k in range(3, 4)) / math.comb(20, 3)
    assert math.isclose(fisher_greater(3, 10, 0, 10), direct)
    assert fisher_greater(0, 10, 3, 10) == 1.0  # nothing to explain: the canary did better
    # Equal counts: by symmetry P(X >= 5) = (1 + P(X = 5)) / 2.
    middle = math.comb(100, 5) ** 2 / math.comb(200, 10)
    assert math.isclose(fisher_greater(5, 100, 5, 100), (1 + middle) / 2)


windows = st.builds(
    lambda n, e, p99: Window(n, min(e, n), p99),
    st.integers(0, 5000), st.integers(0, 500), st.none() | st.floats(0.1, 1000),
)  # fmt: skip
limits = st.builds(
    Thresholds, st.integers(1, 1000), st.floats(1, 3600),
    st.floats(0, 0.2), st.none() | st.floats(1, 5), st.floats(0.001, 0.1),
)  # fmt: skip


@given(windows, windows, limits, st.floats(0, 7200))
def test_the_verdict_is_deterministic_and_never_decides_without_enough_requests(
    canary: Window, stable: Window, thresholds: Thresholds, elapsed: float
) -> None:
    first = judge(canary, stable, thresholds, elapsed)
    assert judge(canary, stable, thresholds, elapsed) == first
    if canary.requests < thresholds.min_requests:
        assert first.kind in ("waiting", "holding")
    if first.kind == "passed":
        assert canary.error_rate - stable.error_rate <= thresholds.max_error_rate_increase
    if first.kind == "failed" and "errorRate" in first.reason.split(";")[0]:
        assert first.p_value is not None and first.p_value < thresholds.alpha
    assert first.reason.startswith(f"Analysis{first.kind.capitalize()}")


@given(st.integers(0, 300), st.integers(1, 300), st.integers(0, 300), st.integers(1, 300))
def test_fisher_is_a_probability_and_more_canary_errors_never_raise_it(
    a_errors: int, a_n: int, b_errors: int, b_n: int
) -> None:
    a_errors, b_errors = min(a_errors, a_n), min(b_errors, b_n)
    p = fisher_greater(a_errors, a_n, b_errors, b_n)
    assert 0.0 <= p <= 1.0
    if a_errors < a_n:
        assert fisher_greater(a_errors + 1, a_n, b_errors, b_n) <= p + 1e-9


SHADOW = ShadowThresholds(min_requests=200, min_agreement=0.99, max_seconds=600)


def test_the_shadow_stage_waits_for_its_mirrored_requests_then_holds() -> None:
    waiting = judge_shadow(Mirrored(37, 0), SHADOW, elapsed_s=30)
    assert (waiting.kind, waiting.reason) == (
        "waiting", "AnalysisWaiting: 37 of 200 mirrored requests compared (shadow stage)")  # fmt: skip
    holding = judge_shadow(Mirrored(37, 30), SHADOW, elapsed_s=600)
    assert holding.kind == "holding"
    assert holding.reason.startswith("AnalysisHolding: 37 of 200 mirrored requests compared "
                                     "after 600 s")  # fmt: skip


def test_the_shadow_stage_fails_on_low_agreement_naming_it() -> None:
    verdict = judge_shadow(Mirrored(200, 75), SHADOW, elapsed_s=5)
    assert (verdict.kind, verdict.reason) == ("failed", (
        "AnalysisFailed: shadow agreement 62.5% (125 of 200 mirrored answers agree with the "
        "primary's arg-max), below minAgreement 99.0%"))  # fmt: skip


def test_the_shadow_stage_passes_at_exactly_its_minimum_agreement() -> None:
    assert judge_shadow(Mirrored(100, 1), ShadowThresholds(100, 0.99, 60), 1).kind == "passed"
    assert judge_shadow(Mirrored(300, 3), ShadowThresholds(300, 0.99, 60), 1).kind == "passed"
    assert judge_shadow(Mirrored(300, 4), ShadowThresholds(300, 0.99, 60), 1).kind == "failed"
    passed = judge_shadow(Mirrored(200, 0), SHADOW, elapsed_s=5)
    assert passed.reason == ("AnalysisPassed: shadow agreement 100.0% (200 of 200 mirrored "
                             "answers agree with the primary's arg-max), minAgreement 99.0%")  # fmt: skip


@given(st.integers(0, 2000), st.integers(0, 2000), st.integers(1, 1000),
       st.floats(0, 1), st.floats(0, 7200))  # fmt: skip
def test_the_shadow_verdict_never_decides_early_and_passes_only_with_enough_agreement(
    judged: int, disagreed: int, minimum: int, agreement: float, elapsed: float
) -> None:
    mirrored = Mirrored(judged, min(disagreed, judged))
    limits = ShadowThresholds(minimum, agreement, 600)
    verdict = judge_shadow(mirrored, limits, elapsed)
    assert verdict == judge_shadow(mirrored, limits, elapsed)
    if judged < minimum:
        assert verdict.kind == ("holding" if elapsed >= 600 else "waiting")
    else:
        assert verdict.kind in ("passed", "failed")
    if verdict.kind == "passed":
        assert mirrored.agreement >= agreement - 1e-9
    if verdict.kind == "failed":
        assert mirrored.agreement < agreement
    assert verdict.reason.startswith(f"Analysis{verdict.kind.capitalize()}")
