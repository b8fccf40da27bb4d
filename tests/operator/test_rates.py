"""Per-version request, error and shed rates from growing counters (fake time)."""

from __future__ import annotations

import pytest

from modelfleet.operator.rates import RateWindow, attainment


def test_rates_need_a_few_seconds_of_samples_then_follow_the_counters() -> None:
    window = RateWindow()
    assert window.add(0.0, 0, 0) is None
    assert window.add(2.0, 20, 0) is None
    rate, errors, shed = window.add(10.0, 95, 5) or (0, 0, 0)
    assert rate == pytest.approx(10.0) and errors == pytest.approx(0.05) and shed == 0


def test_old_samples_leave_the_window_and_a_counter_reset_restarts_it() -> None:
    window = RateWindow()
    for t in range(0, 121, 2):  # 10 req/s for two minutes, then 1 req/s for 60 s
        window.add(float(t), 10 * t, 0)
    for t in range(122, 190, 2):
        window.add(float(t), 1200 + (t - 120), 0)
    rate, _, _ = window.add(190.0, 1270, 0) or (0, 0, 0)
    assert rate == pytest.approx(1.0, abs=0.1)
    assert window.add(192.0, 3, 0) is None  # the pod restarted: counters began again


def test_the_shed_rate_is_the_share_of_requests_admission_refused() -> None:
    window = RateWindow()
    window.add(0.0, 0, 0, 0)
    rate, errors, shed = window.add(10.0, 60, 40, 30) or (0, 0, 0)
    assert rate == pytest.approx(10.0)
    assert errors == pytest.approx(0.4) and shed == pytest.approx(0.3)
    assert window.add(12.0, 62, 40, 2) is None  # a shed counter that drops: a new pod


def test_objective_attainment_is_the_share_of_answers_within_the_objective() -> None:
    window = RateWindow()
    assert attainment(window, 0.0, 0, 0) is None
    assert attainment(window, 2.0, 5, 0) is None  # the window is too short yet
    assert attainment(window, 10.0, 90, 10) == pytest.approx(0.9)
    idle = RateWindow()
    attainment(idle, 0.0, 7, 3)
    assert attainment(idle, 10.0, 7, 3) is None  # no answers in the window: no figure
    assert attainment(window, 12.0, 3, 0) is None  # counters dropped (a new pod): afresh
