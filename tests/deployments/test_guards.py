"""The statistics of rollout guards: the tests agree with scipy, and a verdict needs both a margin
exceeded and significance."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ladle import InferenceRequest, ModelNotFoundError, RuntimeFailureError
from ladle.deployments.guards import (
    GuardPolicy,
    VersionSamples,
    WindowFigures,
    judge,
    mann_whitney_u,
    predicted_labels,
    row_scores,
    two_proportion_z,
)


def scipy_stats():  # type: ignore[no-untyped-def]
    """scipy is a development dependency only; the cross-checks skip without it."""
    return pytest.importorskip("scipy.stats")


def figures(
    n: int,
    errors: int = 0,
    latency: float = 0.01,
    score: float = 0.5,
    labelled: int = 0,
    correct: int = 0,
    seed: int = 0,
    spread: float = 0.002,
) -> WindowFigures:
    rng = np.random.default_rng(seed)
    ok = n - errors
    return WindowFigures(
        requests=n,
        errors=errors,
        latencies=rng.normal(latency, spread, ok).clip(0),
        scores=rng.normal(score, 0.1, ok),
        labelled=labelled,
        correct=correct,
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_mann_whitney_matches_scipy(seed: int, alternative: str) -> None:
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(1.1, 1.0, 60), 1)  # rounding makes ties, which need the correction
    b = np.round(rng.normal(1.0, 1.0, 80), 1)
    u, p = mann_whitney_u(a, b, alternative)
    expected = scipy_stats().mannwhitneyu(
        a, b, alternative=alternative, method="asymptotic", use_continuity=True
    )
    assert u == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(30, 200, 15, 210), (5, 50, 4, 60), (0, 100, 3, 100)])
@pytest.mark.parametrize("margin", [0.0, 0.02])
def test_two_proportion_z_is_the_adjusted_wald_test(
    x1: int, n1: int, x2: int, n2: int, margin: float
) -> None:
    z, p = two_proportion_z(x1, n1, x2, n2, margin)
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    expected_z = (p1 - p2 - margin) / np.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    assert z == pytest.approx(expected_z)
    assert p == pytest.approx(scipy_stats().norm.sf(expected_z))


def test_two_proportion_z_keeps_its_level_under_the_null() -> None:
    # Equal true error rates: a 1% test must reject about 1% of the time, not more.
    rng = np.random.default_rng(7)
    rejections = 0
    for _ in range(4000):
        x1, x2 = rng.binomial(60, 0.02), rng.binomial(400, 0.02)
        rejections += two_proportion_z(int(x1), 60, int(x2), 400)[1] < 0.01
    assert rejections / 4000 < 0.02


def test_no_difference_without_samples() -> None:
    assert two_proportion_z(0, 0, 0, 100) == (0.0, 1.0)
    assert mann_whitney_u([], [1.0]) == (0.0, 1.0)


def test_healthy_canary_passes_once_it_has_enough_samples() -> None:
    policy = GuardPolicy(min_samples=50)
    assert not judge(figures(20), figures(400, seed=1), policy).ready
    verdict = judge(figures(200, errors=1), figures(400, errors=2, seed=1), policy)
    assert verdict.healthy, verdict.reason()


def test_errors_breach_only_when_significant_and_over_the_margin() -> None:
    policy = GuardPolicy(min_samples=50, max_error_increase=0.01)
    broken = judge(figures(200, errors=200), figures(400, seed=1), policy)
    assert [b.guard for b in broken.breaches] == ["error_rate"]
    assert broken.breaches[0].p_value < 1e-6
    # 2 errors in 60 vs 0 in 400: over the margin, but not significantly (Fisher's exact p is 0.017).
    noisy = judge(figures(60, errors=2), figures(400, seed=1), policy)
    assert not noisy.breaches


def test_a_slow_canary_breaches_latency() -> None:
    policy = GuardPolicy(min_samples=50)
    verdict = judge(figures(100, latency=0.050), figures(400, latency=0.010, seed=1), policy)
    assert [b.guard for b in verdict.breaches] == ["p95_latency"]
    # Within the ratio and the slack: tolerated even though it is measurably slower.
    slightly = judge(figures(400, latency=0.0105), figures(400, latency=0.010, seed=1), policy)
    assert not slightly.breaches


def test_shifted_scores_breach_divergence() -> None:
    policy = GuardPolicy(min_samples=50, max_score_shift=0.05)
    verdict = judge(figures(200, score=0.8), figures(400, score=0.5, seed=1), policy)
    assert [b.guard for b in verdict.breaches] == ["output_divergence"]
    assert not judge(figures(200, score=0.51), figures(400, score=0.5, seed=1), policy).breaches


def test_accuracy_needs_labels_and_breaches_on_a_drop() -> None:
    policy = GuardPolicy(min_samples=50, min_labels=40)
    few = judge(figures(200, labelled=20, correct=5), figures(400, labelled=200, correct=190, seed=1), policy)
    assert not few.breaches
    drop = judge(
        figures(200, labelled=100, correct=50), figures(400, labelled=200, correct=190, seed=1), policy
    )
    assert [b.guard for b in drop.breaches] == ["accuracy"]


def test_samples_keep_the_window_and_leave_client_errors_out() -> None:
    samples = VersionSamples()
    request = InferenceRequest("m", {"x": np.zeros((2, 4), dtype=np.float32)})
    samples.record(request, {"score": np.array([0.2, 0.4], dtype=np.float32)}, None)
    samples.record(request, None, RuntimeFailureError("boom"))
    samples.record(request, None, ModelNotFoundError("no such version"))  # the client's mistake
    samples.record_label(1, 2)
    now = time.monotonic()
    window = samples.figures(60.0, now)
    assert (window.requests, window.errors, window.labelled, window.correct) == (2, 1, 2, 1)
    assert window.scores.tolist() == pytest.approx([0.3])
    assert samples.figures(60.0, now + 120).requests == 0  # aged out of the window


def test_scores_and_labels_per_row() -> None:
    one = {"score": np.array([0.2, 0.7], dtype=np.float32)}
    assert row_scores(one) is not None and row_scores(one).tolist() == pytest.approx([0.2, 0.7])
    assert predicted_labels(one).tolist() == [0, 1]
    probabilities = {"p": np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])}
    assert row_scores(probabilities).tolist() == [0.7, 0.5]
    assert predicted_labels(probabilities).tolist() == [1, 0]
    assert predicted_labels({"label": np.array([3, 1])}).tolist() == [3, 1]
    assert row_scores({"text": np.array(["a"], dtype=object)}) is None
