"""The canary analysis judgement: is a canary step's evidence enough, good, or bad?

A pure function of the counters both versions collected over the same window
(the step so far), so that the operator can call it every pass and a restarted
operator reaches the same verdict from the same counters. It counts requests,
not minutes: a step passes as soon as the canary has answered enough requests
and its figures are within the thresholds; a step that runs out of time without
enough requests holds instead of promoting on nothing.

Error rates are compared with Fisher's exact test (one-sided: is the canary's
error rate higher than the stable version's?). It is exact for any counts, so a
handful of errors on a few requests is judged by its real probability instead of
a normal approximation that small counts break; a difference counts as a
regression only when it is both larger than the allowed difference and unlikely
to be chance (p below ``alpha``). A large difference that is not yet
significant is not a verdict either way: the step waits for more requests.

The shadow stage before the first step (``judge_shadow``) judges the canary's answers
to mirrored requests instead: once enough are compared, the share whose arg-max agrees
with the primary's answer passes or fails it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["passed", "failed", "waiting", "holding"]


@dataclass(frozen=True)
class Window:
    """One version's figures over the step's window."""

    requests: int
    """Answered plus failed requests."""
    errors: int
    """Failed requests (a shed request counts as failed)."""
    p99_ms: float | None = None
    """Its p99 latency over the window (None: no answers measured)."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Thresholds:
    min_requests: int
    """Canary requests a step needs before it can pass or fail."""
    max_seconds: float
    """How long a step may wait for them; after that it holds (no promotion)."""
    max_error_rate_increase: float = 0.01
    """Allowed canary error rate above the stable one (absolute: 0.01 = 1 point)."""
    max_p99_ratio: float | None = 1.5
    """Allowed canary p99 over the stable p99 (None: latency not judged)."""
    alpha: float = 0.01
    """Significance an error-rate regression must reach to fail the step."""
    p99_tolerance_ms: float = 0.0
    """A canary p99 at most this much above the stable one never fails the step,
    whatever the ratio (the scheduling noise of a model answering in a few ms)."""


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str
    """``AnalysisPassed: ...``, ``AnalysisFailed: ...``, ``AnalysisWaiting: ...`` or
    ``AnalysisHolding: ...``, with the figures that decided it."""
    p_value: float | None = None


def judge(canary: Window, stable: Window, limits: Thresholds, elapsed_s: float) -> Verdict:
    """The verdict on one step after ``elapsed_s`` seconds of it."""
    if canary.requests < limits.min_requests:
        count = f"{canary.requests} of {limits.min_requests} canary requests"
        if elapsed_s >= limits.max_seconds:
            return Verdict(
                "holding",
                f"AnalysisHolding: {count} after {elapsed_s:.0f} s (the step's maximum is "
                f"{limits.max_seconds:.0f} s); not promoting without evidence",
            )
        return Verdict("waiting", f"AnalysisWaiting: {count}")
    p = fisher_greater(canary.errors, canary.requests, stable.errors, stable.requests)
    rates = (
        f"errorRate {_pct(canary.error_rate)} vs {_pct(stable.error_rate)} "
        f"over {canary.requests} canary and {stable.requests} stable requests"
    )
    worse = canary.error_rate - stable.error_rate > limits.max_error_rate_increase
    if worse and p < limits.alpha:
        return Verdict("failed", f"AnalysisFailed: {rates} (p = {p:.2g} < {limits.alpha})", p)
    latency = _latency(canary, stable, limits)
    if latency is not None:
        return Verdict("failed", f"AnalysisFailed: {latency}", p)
    if worse:
        why = f"{rates}: more than {_pct(limits.max_error_rate_increase)} worse, not yet significant (p = {p:.2g})"
        if elapsed_s >= limits.max_seconds:
            return Verdict("holding", f"AnalysisHolding: {why}", p)
        return Verdict("waiting", f"AnalysisWaiting: {why}", p)
    return Verdict("passed", f"AnalysisPassed: {rates}{_p99_text(canary, stable)}", p)


@dataclass(frozen=True)
class Mirrored:
    """The canary's mirrored requests over the shadow stage's window."""

    judged: int
    """Mirrored requests judged: answers compared on their arg-max, plus failed mirrors."""
    disagreed: int
    """Of those, answers whose arg-max differed from the primary's, plus failed mirrors."""

    @property
    def agreement(self) -> float:
        return 1.0 - self.disagreed / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class ShadowThresholds:
    min_requests: int
    """Mirrored requests the stage needs judged before it can pass or fail."""
    min_agreement: float
    """Agreement (0 to 1) the stage needs to pass; below it, it fails."""
    max_seconds: float
    """How long the stage may wait for them; after that it holds (no canary traffic)."""


def judge_shadow(mirrored: Mirrored, limits: ShadowThresholds, elapsed_s: float) -> Verdict:
    """The verdict on the shadow stage after ``elapsed_s`` seconds of it: once
    ``min_requests`` mirrored requests are judged, their agreement decides."""
    if mirrored.judged < limits.min_requests:
        count = f"{mirrored.judged} of {limits.min_requests} mirrored requests compared"
        if elapsed_s >= limits.max_seconds:
            return Verdict(
                "holding",
                f"AnalysisHolding: {count} after {elapsed_s:.0f} s (the shadow stage's maximum "
                f"is {limits.max_seconds:.0f} s); the canary gets no traffic without evidence",
            )
        return Verdict("waiting", f"AnalysisWaiting: {count} (shadow stage)")
    agreed = mirrored.judged - mirrored.disagreed
    figures = (
        f"shadow agreement {_pct(mirrored.agreement)} ({agreed} of {mirrored.judged} mirrored "
        f"answers agree with the primary's arg-max)"
    )
    # Compared in counts, so that 99 of 100 meets 0.99 however the floats round.
    if agreed < limits.min_agreement * mirrored.judged - 1e-9:
        return Verdict(
            "failed", f"AnalysisFailed: {figures}, below minAgreement {_pct(limits.min_agreement)}"
        )
    return Verdict(
        "passed", f"AnalysisPassed: {figures}, minAgreement {_pct(limits.min_agreement)}"
    )


def _latency(canary: Window, stable: Window, limits: Thresholds) -> str | None:
    """Why the canary's p99 fails the step, or None."""
    if limits.max_p99_ratio is None or canary.p99_ms is None or not stable.p99_ms:
        return None
    ratio = canary.p99_ms / stable.p99_ms
    if ratio <= limits.max_p99_ratio or canary.p99_ms - stable.p99_ms <= limits.p99_tolerance_ms:
        return None
    return (
        f"p99 {canary.p99_ms:.1f} ms vs {stable.p99_ms:.1f} ms ({ratio:.2f}x, more than "
        f"{limits.max_p99_ratio:g}x) over {canary.requests} canary requests"
    )


def _p99_text(canary: Window, stable: Window) -> str:
    if canary.p99_ms is None or stable.p99_ms is None:
        return ""
    return f"; p99 {canary.p99_ms:.1f} ms vs {stable.p99_ms:.1f} ms"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def fisher_greater(a_errors: int, a_n: int, b_errors: int, b_n: int) -> float:
    """One-sided p-value of Fisher's exact test that version A's error rate is higher
    than B's: the probability, with both versions equally good and the margins
    fixed, of A seeing ``a_errors`` or more of the ``a_errors + b_errors`` errors."""
    if a_n <= 0 or b_n <= 0:
        return 1.0
    errors = a_errors + b_errors
    total = a_n + b_n
    top = min(errors, a_n)
    if a_errors > top:
        return 0.0
    log_denominator = _log_comb(total, errors)
    p = 0.0
    for k in range(a_errors, top + 1):
        if errors - k > b_n:
            continue
        p += math.exp(_log_comb(a_n, k) + _log_comb(b_n, errors - k) - log_denominator)
    return min(1.0, p)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
