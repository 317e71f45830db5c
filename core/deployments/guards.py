"""Rollout guards: windowed samples per version and the significance tests that judge a canary.

A canary breaches a guard only when it is significantly worse (at level ``alpha``) than the stable
version by *more than the tolerated margin*: each test's null hypothesis is "within the margin",
so small, noisy differences never roll back a healthy canary.

- error rate and online accuracy: a one-sided two-proportion z-test of ``p_canary - p_stable >
  margin`` (Wald, with the Agresti-Caffo adjustment that keeps it honest for small counts and
  zeros);
- latency: a one-sided Mann-Whitney U test of canary latencies against stable latencies inflated
  to the tolerance (``latency * max_latency_ratio + latency_slack``);
- output divergence: Mann-Whitney U tests of per-request mean scores against stable scores shifted
  by ``max_score_shift`` up and down (two one-sided tests, each at ``alpha / 2``).

The tests use the normal approximation (with tie and continuity corrections), which is sound for
the window sizes a guard waits for (``min_samples``, 30 or more).
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..envelope import Arrays, InferenceRequest
from ..errors import LadleError

__all__ = [
    "Breach",
    "GuardPolicy",
    "Verdict",
    "VersionSamples",
    "WindowFigures",
    "decode_samples",
    "encode_samples",
    "judge",
    "mann_whitney_u",
    "normal_sf",
    "predicted_labels",
    "row_scores",
    "two_proportion_z",
]


# statistics ------------------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int, margin: float = 0.0) -> tuple[float, float]:
    """Two-proportion z-test of H1: ``p1 - p2 > margin`` (``x`` events out of ``n`` trials).

    Agresti-Caffo adjusted Wald test: one event and one non-event are added to each sample, which
    keeps the test's level close to nominal for small counts and proportions of 0 or 1. Returns
    ``(z, one-sided p-value)``.
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p1 = (x1 + 1.0) / (n1 + 2.0)
    p2 = (x2 + 1.0) / (n2 + 2.0)
    standard_error = math.sqrt(p1 * (1.0 - p1) / (n1 + 2.0) + p2 * (1.0 - p2) / (n2 + 2.0))
    z = (p1 - p2 - margin) / standard_error
    return z, normal_sf(z)


def _average_ranks(values: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], float]:
    """1-based ranks with ties averaged, and the tie term sum(t^3 - t)."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks, float(np.sum(counts.astype(np.float64) ** 3 - counts))


def mann_whitney_u(
    a: np.ndarray[Any, Any] | list[float], b: np.ndarray[Any, Any] | list[float], alternative: str = "greater"
) -> tuple[float, float]:
    """Mann-Whitney U test of sample ``a`` against ``b`` (normal approximation).

    ``alternative`` is ``"greater"`` (``a`` tends to be larger) or ``"two-sided"``. Returns
    ``(U of a, p-value)``; matches ``scipy.stats.mannwhitneyu(..., method="asymptotic")``.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    n = n1 + n2
    ranks, ties = _average_ranks(np.concatenate([x, y]))
    u = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2.0
    mean = n1 * n2 / 2.0
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0.0:
        return u, 1.0
    sd = math.sqrt(variance)
    if alternative == "greater":
        return u, normal_sf((u - mean - 0.5) / sd)
    if alternative == "two-sided":
        z = (abs(u - mean) - 0.5) / sd
        return u, min(1.0, 2.0 * normal_sf(z))
    raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")


# per-response summaries --------------------------------------------------------------------------


def _score_array(outputs: Arrays, name: str | None) -> np.ndarray[Any, Any] | None:
    if name is not None:
        return outputs.get(name)
    for array in outputs.values():
        if array.dtype.kind in "fiu":
            return array
    return None


def row_scores(outputs: Arrays, name: str | None = None) -> np.ndarray[Any, Any] | None:
    """One score per row: the value of a ``[rows]``/``[rows, 1]`` output, the top probability of
    a ``[rows, classes]`` one. ``name`` picks the output (default: the first numeric one)."""
    array = _score_array(outputs, name)
    if array is None or array.ndim == 0 or array.dtype.kind not in "fiub":
        return None
    if array.ndim == 1:
        return array
    flat = array.reshape(array.shape[0], -1)
    return flat[:, 0] if flat.shape[1] == 1 else flat.max(axis=1)


def predicted_labels(outputs: Arrays, name: str | None = None) -> np.ndarray[Any, Any] | None:
    """One label per row: integer outputs as they are, ``score >= 0.5`` for one score per row,
    the arg-max for ``[rows, classes]`` probabilities."""
    array = _score_array(outputs, name)
    if array is None or array.ndim == 0:
        return None
    if array.dtype.kind in "iub":
        return array.reshape(array.shape[0], -1)[:, 0]
    flat = array.reshape(array.shape[0], -1)
    if flat.shape[1] == 1:
        return (flat[:, 0] >= 0.5).astype(np.int64)
    labels: np.ndarray[Any, Any] = flat.argmax(axis=1)
    return labels


# windowed samples --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowFigures:
    """What one version did within a window."""

    requests: int
    errors: int
    latencies: np.ndarray[Any, Any]
    scores: np.ndarray[Any, Any]
    labelled: int
    correct: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else 0.0

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if len(self.latencies) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": round(self.latency(50) * 1e3, 3),
            "p95_ms": round(self.latency(95) * 1e3, 3),
            "p99_ms": round(self.latency(99) * 1e3, 3),
            "mean_score": round(float(self.scores.mean()), 6) if len(self.scores) else None,
            "labelled": self.labelled,
            "accuracy": round(self.accuracy, 6) if self.labelled else None,
        }


class VersionSamples:
    """Bounded, windowed samples of one version, fed once per response from the data path.

    Client errors (4xx) are not the version's fault and are left out; every other error counts.
    """

    __slots__ = ("_labels", "_outcomes", "score_output")

    def __init__(self, capacity: int = 20_000, score_output: str | None = None) -> None:
        # (time, latency or NaN for an error, score or NaN)
        self._outcomes: deque[tuple[float, float, float]] = deque(maxlen=capacity)
        # (time, correct rows, labelled rows)
        self._labels: deque[tuple[float, int, int]] = deque(maxlen=capacity)
        self.score_output = score_output

    def record(self, request: InferenceRequest, outputs: Arrays | None, error: BaseException | None) -> None:
        now = time.monotonic()
        if error is not None:
            if isinstance(error, LadleError) and error.status < 500:
                return
            self._outcomes.append((now, math.nan, math.nan))
            return
        score = math.nan
        if outputs is not None:
            scores = row_scores(outputs, self.score_output)
            if scores is not None and len(scores):
                score = float(scores.mean())
        self._outcomes.append((now, now - request.arrival, score))

    def record_label(self, correct: int, total: int) -> None:
        self._labels.append((time.monotonic(), correct, total))

    def clear(self) -> None:
        self._outcomes.clear()
        self._labels.clear()

    def export(self, window: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The samples of the last ``window`` seconds with wall-clock times (they outlive this
        process): ``(outcomes [n, 3], labels [m, 3])`` as ``record`` and ``record_label`` keep them."""
        offset = time.time() - time.monotonic()
        since = time.monotonic() - window
        outcomes = np.asarray([o for o in list(self._outcomes) if o[0] >= since], dtype=np.float64)
        labels = np.asarray([x for x in list(self._labels) if x[0] >= since], dtype=np.float64)
        outcomes, labels = outcomes.reshape(-1, 3), labels.reshape(-1, 3)
        outcomes[:, 0] += offset
        labels[:, 0] += offset
        return outcomes, labels

    def restore(self, outcomes: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> None:
        """Put exported samples back (before any recorded since), their times made monotonic again."""
        offset = time.time() - time.monotonic()
        self._outcomes.extendleft(
            (float(t) - offset, float(latency), float(score)) for t, latency, score in outcomes[::-1]
        )
        self._labels.extendleft((float(t) - offset, int(c), int(n)) for t, c, n in labels[::-1])

    def figures(self, window: float, now: float | None = None) -> WindowFigures:
        """Figures of the samples from the last ``window`` seconds."""
        since = (time.monotonic() if now is None else now) - window
        rows = [o for o in list(self._outcomes) if o[0] >= since]
        data = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        failed = np.isnan(data[:, 1])
        latencies = data[~failed, 1]
        scores = data[~failed, 2]
        labels = [(c, t) for ts, c, t in list(self._labels) if ts >= since]
        return WindowFigures(
            requests=len(rows),
            errors=int(failed.sum()),
            latencies=latencies,
            scores=scores[~np.isnan(scores)],
            labelled=sum(t for _, t in labels),
            correct=sum(c for c, _ in labels),
        )


def encode_samples(samples: Mapping[str, VersionSamples], window: float) -> bytes:
    """The samples of every version, as the deployment store keeps them (numpy's ``.npz``)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for index, (version, version_samples) in enumerate(samples.items()):
        outcomes, labels = version_samples.export(window)
        arrays[f"v{index}_outcomes"], arrays[f"v{index}_labels"] = outcomes, labels
        arrays[f"v{index}_name"] = np.frombuffer(version.encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_samples(blob: bytes) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """What ``encode_samples`` wrote: version -> (outcomes, labels)."""
    decoded: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        index = 0
        while f"v{index}_name" in archive:
            version = archive[f"v{index}_name"].tobytes().decode()
            decoded[version] = (archive[f"v{index}_outcomes"], archive[f"v{index}_labels"])
            index += 1
    return decoded


# the judgement -----------------------------------------------------------------------------------


class GuardPolicy(BaseModel):
    """Thresholds of a guarded rollout: a breach is a canary significantly worse than the margin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="significance level of every test")
    window: float = Field(default=60.0, gt=0, description="seconds of samples judged")
    min_samples: int = Field(default=50, ge=5, description="requests per version before judging")
    max_error_increase: float = Field(default=0.01, ge=0, le=1, description="tolerated error-rate rise")
    max_latency_ratio: float = Field(default=1.25, ge=1, description="tolerated canary/stable p95 ratio")
    latency_slack: float = Field(default=0.002, ge=0, description="seconds of p95 rise always tolerated")
    max_score_shift: float = Field(default=0.05, ge=0, description="tolerated shift of the mean score")
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1, description="tolerated accuracy drop")
    min_labels: int = Field(default=30, ge=5, description="labelled rows per version before judging accuracy")
    score_output: str | None = Field(default=None, description="output judged for divergence")


@dataclass(frozen=True)
class Breach:
    """One guard the canary failed, with the figures that show it."""

    guard: str
    canary: float
    stable: float
    limit: float
    p_value: float

    def describe(self) -> str:
        return (
            f"{self.guard}: canary {self.canary:.4g} vs stable {self.stable:.4g} "
            f"(limit {self.limit:.4g}, p={self.p_value:.2g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "guard": self.guard,
            "canary": self.canary,
            "stable": self.stable,
            "limit": self.limit,
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class Verdict:
    """The judgement of a window: ``ready`` once enough samples arrived; ``breaches`` if any failed."""

    ready: bool
    breaches: tuple[Breach, ...] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.ready and not self.breaches

    def reason(self) -> str:
        return "; ".join(b.describe() for b in self.breaches)


def judge(canary: WindowFigures, stable: WindowFigures, policy: GuardPolicy) -> Verdict:
    """Compare a canary's window with the stable version's."""
    figures = {"canary": canary.to_dict(), "stable": stable.to_dict()}
    breaches: list[Breach] = []
    alpha = policy.alpha
    enough = canary.requests >= policy.min_samples and stable.requests >= policy.min_samples
    if enough:
        margin = policy.max_error_increase
        _, p = two_proportion_z(canary.errors, canary.requests, stable.errors, stable.requests, margin)
        if p < alpha:
            limit = stable.error_rate + margin
            breaches.append(Breach("error_rate", canary.error_rate, stable.error_rate, limit, p))
    if len(canary.latencies) >= policy.min_samples and len(stable.latencies) >= policy.min_samples:
        tolerated = stable.latencies * policy.max_latency_ratio + policy.latency_slack
        _, p = mann_whitney_u(canary.latencies, tolerated, "greater")
        if p < alpha:
            s95 = stable.latency(95)
            limit = s95 * policy.max_latency_ratio + policy.latency_slack
            breaches.append(Breach("p95_latency", canary.latency(95), s95, limit, p))
    if len(canary.scores) >= policy.min_samples and len(stable.scores) >= policy.min_samples:
        shift = policy.max_score_shift
        _, p_up = mann_whitney_u(canary.scores, stable.scores + shift, "greater")
        _, p_down = mann_whitney_u(stable.scores - shift, canary.scores, "greater")
        p = min(1.0, 2.0 * min(p_up, p_down))
        if p < alpha:
            c_mean, s_mean = float(canary.scores.mean()), float(stable.scores.mean())
            breaches.append(Breach("output_divergence", c_mean, s_mean, shift, p))
    if canary.labelled >= policy.min_labels and stable.labelled >= policy.min_labels:
        wrong_c, wrong_s = canary.labelled - canary.correct, stable.labelled - stable.correct
        _, p = two_proportion_z(wrong_c, canary.labelled, wrong_s, stable.labelled, policy.max_accuracy_drop)
        if p < alpha:
            limit = stable.accuracy - policy.max_accuracy_drop
            breaches.append(Breach("accuracy", canary.accuracy, stable.accuracy, limit, p))
    # A breach is final even before every figure has enough samples; health needs them all.
    return Verdict(ready=enough or bool(breaches), breaches=tuple(breaches), figures=figures)
