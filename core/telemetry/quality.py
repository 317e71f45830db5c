"""Quality monitoring: windowed distributions of outputs (and inputs), drift scores, input checks.

Per model version and per monitored tensor column, values are binned (vectorised, once per batch)
into a histogram family ``ladle.quality.distribution`` whose bins are the deciles (``bins``) of a
*reference*: either the first ``reference_rows`` rows the version served, or a reference file
(``reference_from_arrays`` builds one from training data; ``QualityMonitor.reference`` exports the
one a version learned). The drift score of a column is the population stability index (PSI)
between the reference and the last ``window`` seconds; rule of thumb: < 0.1 stable, 0.1-0.25
moderate shift, > 0.25 significant. It is exported as the gauge ``ladle.quality.drift``.

``InputChecks`` compares inputs with ranges (``min``/``max`` in the signature's input entries or
``[telemetry.quality.ranges.<model>]``) and, when the signature is known, its datatypes and shapes:
in ``count`` mode violations are counted per batch, in ``reject`` mode the server calls
``validate`` before queueing and the request fails with a 400 naming the input.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..envelope import Arrays, InferenceRequest
from ..errors import ConfigError, InvalidInputError, SignatureMismatchError
from ..tensors import Signature, TensorSpec
from .families import ATTR_MODEL, ATTR_VERSION, Attributes
from .series import WindowedCounter, WindowedHistogram
from .stats import StatsRegistry

__all__ = [
    "REFERENCE_FORMAT",
    "InputChecks",
    "QualityMonitor",
    "TensorReference",
    "load_reference",
    "psi",
    "reference_from_arrays",
    "write_reference",
]

REFERENCE_FORMAT = "ladle-quality-reference"
ATTR_FEATURE = "ladle.quality.feature"
ATTR_ROLE = "ladle.quality.role"
ATTR_INPUT = "ladle.quality.input"
DISTRIBUTION = "ladle.quality.distribution"
DRIFT = "ladle.quality.drift"
OUT_OF_RANGE = "ladle.quality.out_of_range"
SCHEMA_MISMATCHES = "ladle.quality.schema_mismatches"
REJECTED = "ladle.quality.rejected"
_FLOOR = 1e-4  # proportion floor, so empty bins do not make PSI infinite
_SMALL = 64  # values per batch below which binning is done without numpy

Role = Literal["input", "output"]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def psi(reference: Sequence[float] | FloatArray, current: Sequence[float] | FloatArray) -> float:
    """Population stability index between two histograms over the same bins."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0
    p = np.maximum(ref / ref.sum(), _FLOOR)
    q = np.maximum(cur / cur.sum(), _FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass(frozen=True)
class TensorReference:
    """Reference bins of one tensor: per column, inner bin edges and the reference counts."""

    role: Role
    name: str
    edges: tuple[tuple[float, ...], ...]
    counts: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "edges": [list(e) for e in self.edges],
            "counts": [list(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorReference:
        role = data["role"]
        if role not in ("input", "output"):
            raise ValueError(f"role must be 'input' or 'output', got {role!r}")
        edges = tuple(tuple(float(v) for v in column) for column in data["edges"])
        counts = tuple(tuple(int(v) for v in column) for column in data["counts"])
        if len(edges) != len(counts) or any(len(c) != len(e) + 1 for e, c in zip(edges, counts, strict=True)):
            raise ValueError(f"tensor {data['name']!r}: each column needs len(counts) == len(edges) + 1")
        for column in edges:
            if any(b <= a for a, b in itertools.pairwise(column)):
                raise ValueError(f"tensor {data['name']!r}: edges must be strictly increasing")
        return cls(role, str(data["name"]), edges, counts)


def _columns(array: np.ndarray[Any, Any], max_columns: int) -> FloatArray | None:
    """A numeric tensor as (rows, columns) float64, or ``None`` for non-numeric tensors."""
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        return None
    matrix = array.reshape(array.shape[0], -1)[:, :max_columns]
    return matrix.astype(np.float64, copy=False)


def _edges_of(values: FloatArray, bins: int) -> list[tuple[float, ...]]:
    """Per column, the unique inner quantile edges of ``values`` (rows, columns)."""
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    result: list[tuple[float, ...]] = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            result.append((0.0,))
            continue
        edges = np.unique(np.quantile(finite, quantiles))
        result.append(tuple(float(e) for e in edges))
    return result


class _Binner:
    """Vectorised binning of (rows, columns) against per-column edges padded to one width."""

    def __init__(self, edges: Sequence[Sequence[float]]) -> None:
        self.widths = [len(e) + 1 for e in edges]
        self.bins = max(self.widths)
        self.columns = len(edges)
        padded = np.full((self.columns, self.bins - 1), np.inf)
        for index, column in enumerate(edges):
            padded[index, : len(column)] = column
        self.edges = padded

    def counts(self, values: FloatArray) -> tuple[np.ndarray[Any, Any], FloatArray, FloatArray, FloatArray]:
        """Per-column bin counts, sums, minima and maxima of the finite values."""
        finite = np.isfinite(values)
        index = (values[:, :, None] > self.edges[None, :, :]).sum(axis=2)
        flat = index + np.arange(self.columns) * self.bins
        flat = np.where(finite, flat, self.columns * self.bins)  # non-finite values land past the end
        counts = np.bincount(flat.ravel(), minlength=self.columns * self.bins + 1)[:-1]
        clean = np.where(finite, values, 0.0)
        sums = clean.sum(axis=0)
        lows = np.where(finite, values, np.inf).min(axis=0)
        highs = np.where(finite, values, -np.inf).max(axis=0)
        return counts.reshape(self.columns, self.bins), sums, lows, highs


def reference_from_arrays(
    arrays: Mapping[str, np.ndarray[Any, Any]], role: Role = "input", bins: int = 10, max_columns: int = 16
) -> list[TensorReference]:
    """Reference bins (deciles by default) computed from sample data, e.g. a training set."""
    references = []
    for name, array in arrays.items():
        values = _columns(np.asarray(array), max_columns)
        if values is None:
            continue
        edges = _edges_of(values, bins)
        binner = _Binner(edges)
        counts = binner.counts(values)[0]
        references.append(
            TensorReference(
                role,
                name,
                tuple(edges),
                tuple(tuple(int(c) for c in row[:w]) for row, w in zip(counts, binner.widths, strict=True)),
            )
        )
    return references


def write_reference(path: Path, references: Sequence[TensorReference]) -> None:
    """Write a reference file (JSON) that ``[telemetry.quality.references]`` can name."""
    data = {"format": REFERENCE_FORMAT, "version": 1, "tensors": [r.to_dict() for r in references]}
    path.write_text(json.dumps(data, indent=1))


def load_reference(path: Path) -> list[TensorReference]:
    """Read a reference file; raises ``ConfigError`` naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"'format' must be {REFERENCE_FORMAT!r}")
        return [TensorReference.from_dict(t) for t in data["tensors"]]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read quality reference: {exc.strerror}", file=str(path)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a quality reference: {exc}", file=str(path)) from None


class _TensorMonitor:
    """One monitored tensor of one version: its reference and its per-column series."""

    def __init__(self, monitor: _VersionQuality, role: Role, name: str) -> None:
        self.monitor = monitor
        self.role = role
        self.name = name
        self.reference: TensorReference | None = None
        self.binner: _Binner | None = None
        self.series: list[WindowedHistogram] = []
        self.pending: list[FloatArray] = []
        self.pending_rows = 0

    def set_reference(self, reference: TensorReference) -> None:
        owner = self.monitor
        self.binner = _Binner(reference.edges)
        family = owner.owner.distribution
        self.series = []
        for column, edges in enumerate(reference.edges):
            key = (*owner.key, (ATTR_ROLE, self.role), (ATTR_FEATURE, self._feature_name(column, reference)))
            series = family.get(key, edges)
            self.series.append(series)
            owner.owner.drift_gauge.register(key, self._drift_reader(column))
        self.reference = reference
        self.pending = []

    def _feature_name(self, column: int, reference: TensorReference) -> str:
        return self.name if len(reference.edges) == 1 else f"{self.name}[{column}]"

    def _drift_reader(self, column: int) -> Any:
        return lambda: self.drift(column)

    def drift(self, column: int, now: float | None = None) -> float | None:
        """PSI of one column over the window; ``None`` until ``min_count`` values were seen."""
        if self.reference is None:
            return None
        settings = self.monitor.owner.settings
        window = self.series[column].window(settings["window"], time.monotonic() if now is None else now)
        if window.count < settings["min_count"]:
            return None
        return psi(self.reference.counts[column], window.counts)

    def observe(self, values: FloatArray, now: float) -> None:
        if self.reference is None:
            self._collect(values)
            return
        binner = self.binner
        assert binner is not None
        if values.shape[1] < binner.columns:
            return  # a request of another shape than the reference: not comparable
        if values.shape[0] * binner.columns <= _SMALL:
            # a few values: plain bisection beats numpy's per-call overhead by far
            for column_values, series in zip(
                zip(*values[:, : binner.columns].tolist(), strict=True), self.series, strict=True
            ):
                finite = [v for v in column_values if math.isfinite(v)]
                if finite:
                    series.observe_many(finite, now)
            return
        counts, sums, lows, highs = binner.counts(values[:, : binner.columns])
        for column, series in enumerate(self.series):
            if highs[column] >= lows[column]:
                width = binner.widths[column]
                series.add_counts(
                    counts[column, :width].tolist(),
                    float(sums[column]),
                    float(lows[column]),
                    float(highs[column]),
                    now,
                )

    def _collect(self, values: FloatArray) -> None:
        """Gather the reference window; when full, derive bins from it."""
        settings = self.monitor.owner.settings
        if self.pending and values.shape[1] != self.pending[0].shape[1]:
            return
        self.pending.append(values.copy())
        self.pending_rows += values.shape[0]
        if self.pending_rows >= settings["reference_rows"]:
            sample = np.concatenate(self.pending)
            self.set_reference(
                reference_from_arrays(
                    {self.name: sample}, self.role, settings["bins"], settings["max_columns"]
                )[0]
            )


class _VersionQuality:
    def __init__(self, owner: QualityMonitor, model: str, version: str) -> None:
        self.owner = owner
        self.model = model
        self.version = version
        self.key: Attributes = ((ATTR_MODEL, model), (ATTR_VERSION, version))
        self.tensors: dict[tuple[Role, str], _TensorMonitor] = {}
        self.checks: InputChecks | None = None
        self._lock = threading.Lock()
        references = owner.references.get(model, ())
        for reference in references:
            self.tensor(reference.role, reference.name).set_reference(reference)
        # a reference given for inputs asks for input monitoring, whatever the default says
        self.inputs = bool(owner.settings["inputs"]) or any(r.role == "input" for r in references)

    def tensor(self, role: Role, name: str) -> _TensorMonitor:
        monitor = self.tensors.get((role, name))
        if monitor is None:
            monitor = self.tensors[(role, name)] = _TensorMonitor(self, role, name)
        return monitor

    def observe(
        self,
        requests: Sequence[InferenceRequest],
        outputs: Sequence[Arrays | None] | None,
        now: float,
    ) -> None:
        settings = self.owner.settings
        if settings["sample"] < 1.0 and random.random() >= settings["sample"]:
            return
        with self._lock:
            if (self.inputs or self.checks is not None) and requests:
                inputs = _join([r.inputs for r in requests])
                if self.inputs:
                    self._observe_arrays("input", inputs, now)
                if self.checks is not None:
                    self.checks.count_batch(inputs, len(requests), now)
            if settings["outputs"] and outputs:
                self._observe_arrays("output", _join([o for o in outputs if o is not None]), now)

    def _observe_arrays(self, role: Role, arrays: Arrays, now: float) -> None:
        for name, joined in arrays.items():
            values = _columns(joined, self.owner.settings["max_columns"])
            if values is not None and values.shape[0]:
                self.tensor(role, name).observe(values, now)

    def drift(self) -> dict[str, float]:
        """PSI per monitored feature (``role:feature``) that has enough data."""
        scores: dict[str, float] = {}
        for monitor in list(self.tensors.values()):
            if monitor.reference is None:
                continue
            for column in range(len(monitor.series)):
                score = monitor.drift(column)
                if score is not None:
                    scores[f"{monitor.role}:{monitor._feature_name(column, monitor.reference)}"] = score
        return scores


def _bounds(values: np.ndarray[Any, Any]) -> str:
    """A bound for a message: one number, or the first few of a per-column bound."""
    flat = np.asarray(values).ravel()
    text = ", ".join(f"{v:g}" for v in flat[:4])
    return text if flat.size <= 1 else f"[{text}{', ...' if flat.size > 4 else ''}]"


def _join(arrays: Sequence[Arrays]) -> Arrays:
    """The requests' tensors concatenated by name (tensors that do not concatenate are left out)."""
    if len(arrays) == 1:
        return arrays[0]
    joined: Arrays = {}
    for name in arrays[0] if arrays else ():
        try:
            joined[name] = np.concatenate([a[name] for a in arrays])
        except (KeyError, ValueError):
            continue
    return joined


@dataclass(frozen=True)
class CheckCounters:
    """Where input checks count: per input name, and requests rejected."""

    out_of_range: Callable[[str], WindowedCounter]
    schema_mismatches: Callable[[str], WindowedCounter]
    rejected: WindowedCounter


class InputChecks:
    """Range and schema checks of a version's inputs (``mode``: ``count`` or ``reject``)."""

    def __init__(
        self,
        ranges: Mapping[str, tuple[Any, Any]],
        specs: Sequence[TensorSpec] = (),
        mode: Literal["count", "reject"] = "count",
        counters: CheckCounters | None = None,
    ) -> None:
        self.mode = mode
        self.ranges = {
            name: (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
            for name, (lo, hi) in ranges.items()
        }
        self.specs = {spec.name: spec for spec in specs}
        self.counters = counters

    @classmethod
    def from_signature(
        cls,
        signature: Mapping[str, Any] | Signature | None,
        ranges: Mapping[str, tuple[Any, Any]] | None = None,
        mode: Literal["count", "reject"] = "count",
    ) -> InputChecks:
        """Checks from a signature: a ``Signature`` (schema only) or its dict form, whose input
        entries may carry ``min`` and ``max`` (a number, or one per column). ``ranges`` add to them."""
        found: dict[str, tuple[Any, Any]] = {}
        specs: list[TensorSpec] = []
        if isinstance(signature, Signature):
            specs = list(signature.inputs)
        elif signature:
            for entry in signature.get("inputs", ()):
                if "datatype" in entry and "shape" in entry:
                    specs.append(TensorSpec.from_dict(entry))
                if "min" in entry or "max" in entry:
                    found[str(entry["name"])] = (entry.get("min", -math.inf), entry.get("max", math.inf))
        found.update(ranges or {})
        return cls(found, specs, mode)

    def violations(self, inputs: Arrays) -> tuple[dict[str, int], list[str]]:
        """(values out of range per input, inputs that do not fit the schema)."""
        out_of_range: dict[str, int] = {}
        mismatched: list[str] = []
        for name, array in inputs.items():
            spec = self.specs.get(name)
            if spec is not None:
                try:
                    spec.check(array)
                except SignatureMismatchError:
                    mismatched.append(name)
                    continue
            bounds = self.ranges.get(name)
            if bounds is None or array.dtype.kind not in "biuf":
                continue
            lo, hi = bounds
            values = array.reshape(array.shape[0], -1) if array.ndim > 1 else array
            try:
                bad = ~((values >= lo) & (values <= hi))  # NaN fails both comparisons
            except ValueError:  # per-column bounds that do not fit this shape
                mismatched.append(name)
                continue
            count = int(np.count_nonzero(bad))
            if count:
                out_of_range[name] = count
        return out_of_range, mismatched

    def validate(self, inputs: Arrays) -> None:
        """Raise ``InvalidInputError`` (400) naming the inputs out of range (``reject`` mode)."""
        out_of_range, mismatched = self.violations(inputs)
        if out_of_range or mismatched:
            if self.counters is not None:
                self.counters.rejected.add(1, time.monotonic())
            details = {
                name: {
                    "out_of_range": count,
                    "min": self.ranges[name][0].tolist(),
                    "max": self.ranges[name][1].tolist(),
                }
                for name, count in out_of_range.items()
            }
            named = "; ".join(
                f"{name}: {count} value(s) outside [{_bounds(self.ranges[name][0])}, "
                f"{_bounds(self.ranges[name][1])}]"
                for name, count in out_of_range.items()
            )
            raise InvalidInputError(
                f"input values outside the accepted ranges ({named})"
                if out_of_range
                else f"inputs {mismatched} do not fit the signature",
                inputs=details,
                schema_mismatch=mismatched,
            )

    def count_batch(self, inputs: Arrays, requests: int, now: float) -> None:
        """Count violations in a batch's inputs, concatenated by name (``count`` mode).

        Requests share a batch only when their shapes agree, so a schema mismatch counts for all.
        """
        if self.counters is None:
            return
        out_of_range, mismatched = self.violations(inputs)
        for name, count in out_of_range.items():
            self.counters.out_of_range(name).add(count, now)
        for name in mismatched:
            self.counters.schema_mismatches(name).add(requests, now)


class QualityMonitor:
    """Quality figures of every version, kept in the stats registry's families.

    ``settings``: ``inputs``, ``outputs`` (which tensors to monitor), ``sample`` (fraction of
    batches), ``bins``, ``reference_rows``, ``window`` (seconds), ``min_count``, ``max_columns``,
    ``checks`` (``off``/``count``/``reject``) and ``ranges`` (model -> input -> (min, max)).
    """

    def __init__(
        self,
        stats: StatsRegistry,
        settings: Mapping[str, Any] | None = None,
        references: Mapping[str, Sequence[TensorReference]] | None = None,
    ) -> None:
        defaults = {
            "inputs": False,
            "outputs": True,
            "sample": 1.0,
            "bins": 10,
            "reference_rows": 1000,
            "window": 300.0,
            "min_count": 100,
            "max_columns": 16,
            "checks": "off",
            "ranges": {},
        }
        self.settings: dict[str, Any] = {**defaults, **(settings or {})}
        self.stats = stats
        self.references = dict(references or {})
        slot = max(1.0, self.settings["window"] / 60)
        self.distribution = stats.histogram_family(
            DISTRIBUTION,
            "1",
            "Distribution of monitored tensor values, over reference bins",
            bounds=(0.0,),
            slot_seconds=slot,
            horizon=self.settings["window"],
        )
        self.drift_gauge = stats.gauge_family(
            DRIFT, "1", "Population stability index of a feature against its reference"
        )
        self.out_of_range = stats.counter_family(OUT_OF_RANGE, "{value}", "Input values outside their range")
        self.schema_mismatches = stats.counter_family(
            SCHEMA_MISMATCHES, "{request}", "Requests whose input did not fit the signature"
        )
        self.rejected = stats.counter_family(REJECTED, "{request}", "Requests rejected by input checks")
        self._versions: dict[tuple[str, str], _VersionQuality] = {}

    def version(self, model: str, version: str) -> _VersionQuality:
        quality = self._versions.get((model, version))
        if quality is None:
            quality = self._versions[(model, version)] = _VersionQuality(self, model, version)
        return quality

    def observe(
        self,
        model: str,
        version: str,
        requests: Sequence[InferenceRequest],
        outputs: Sequence[Arrays | None] | None,
        now: float | None = None,
    ) -> None:
        """Feed one finished batch (inputs come from the requests)."""
        self.version(model, version).observe(requests, outputs, time.monotonic() if now is None else now)

    def configure_checks(
        self, model: str, version: str, signature: Mapping[str, Any] | Signature | None
    ) -> InputChecks | None:
        """Set up input checks for a version from its signature and the configured ranges."""
        mode = self.settings["checks"]
        if mode == "off":
            return None
        quality = self.version(model, version)
        ranges = {name: tuple(bounds) for name, bounds in self.settings["ranges"].get(model, {}).items()}
        checks = InputChecks.from_signature(signature, ranges, mode)
        key = quality.key
        checks.counters = CheckCounters(
            lambda name: self.out_of_range.get((*key, (ATTR_INPUT, name))),
            lambda name: self.schema_mismatches.get((*key, (ATTR_INPUT, name))),
            self.rejected.get(key),
        )
        if mode == "count":
            quality.checks = checks
        return checks

    def drift(self, model: str, version: str) -> dict[str, float]:
        """PSI per feature of one version (features without enough data are left out)."""
        quality = self._versions.get((model, version))
        return quality.drift() if quality else {}

    def drift_score(self, model: str, version: str) -> float | None:
        """The largest PSI of a version's features, ``None`` without data."""
        scores = self.drift(model, version)
        return max(scores.values()) if scores else None

    def reference(self, model: str, version: str) -> list[TensorReference]:
        """The references a version uses (learned or loaded), to save with ``write_reference``."""
        quality = self._versions.get((model, version))
        if quality is None:
            return []
        return [m.reference for m in quality.tensors.values() if m.reference is not None]

    def remove(self, model: str, version: str) -> None:
        self._versions.pop((model, version), None)
