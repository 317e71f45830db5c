"""Windowed series: a ring of fixed-length time slots plus a running total since creation.

Recording touches one slot (the one of the current second) with list increments and no locks;
a slot is recycled at most once per slot length, under a lock that readers share, so cumulative
figures stay monotonic for exporters reading from another thread. Series recorded together (a
version's built-in figures) share one ``SlotClock``: a batch looks its slot up once for all.

Time is ``time.monotonic()``, which is system-wide on Linux: a worker process's slots line up with
the front process's, so deltas taken in one process merge slot by slot into another.
"""

from __future__ import annotations

import itertools
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LATENCY_BOUNDS",
    "HistogramSnapshot",
    "SlotClock",
    "WindowedCounter",
    "WindowedHistogram",
    "quantile",
]

#: Bucket upper bounds (seconds) for request latencies: 100 µs to 60 s on a 1-2-5 scale.
DEFAULT_LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    60.0,
)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Bucket counts (``len(bounds) + 1``; the last is the overflow), sum, count, min and max."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int
    minimum: float
    maximum: float

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) interpolated within its bucket; ``None`` when empty."""
        return quantile(q, self.counts, self.bounds, self.minimum, self.maximum)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float], lo: float, hi: float) -> float | None:
    """Estimate a quantile from bucket counts, as Prometheus' ``histogram_quantile`` does, but
    clamped to the observed ``[lo, hi]`` (exact when every value fell in one bucket)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = bounds[index - 1] if index > 0 else lo
            upper = bounds[index] if index < len(bounds) else hi
            lower, upper = max(lower, lo), min(upper, hi)
            if upper <= lower:
                return lower
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
    return hi


class SlotClock:
    """Which time slot each ring position holds; series recorded together share one clock, so a
    batch finds its slot once for all of them and a slot is recycled for all of them at once."""

    __slots__ = ("created", "lock", "members", "size", "slot_seconds", "stamps")

    def __init__(self, horizon: float = 300.0, slot_seconds: float = 1.0, now: float = 0.0) -> None:
        if slot_seconds <= 0 or horizon < slot_seconds:
            raise ValueError("need 0 < slot_seconds <= horizon")
        self.slot_seconds = slot_seconds
        self.size = math.ceil(horizon / slot_seconds) + 1  # +1: the current, partial slot
        self.stamps = [-1] * self.size
        self.lock = threading.Lock()
        self.members: list[WindowedCounter | WindowedHistogram] = []
        self.created = now

    def index(self, now: float) -> int:
        """The ring position of ``now``, recycled if it held an older slot; ``-1`` when ``now`` is
        older than the ring holds (callers then add to the running totals only)."""
        stamp = int(now // self.slot_seconds)
        index = stamp % self.size
        held = self.stamps[index]
        if held == stamp:
            return index
        if held > stamp:
            return -1
        with self.lock:
            if self.stamps[index] < stamp:
                for member in self.members:
                    member._recycle(index)
                self.stamps[index] = stamp
        return index

    def window_stamps(self, seconds: float, now: float) -> tuple[int, int]:
        """Stamps ``(first, last)`` of the slots covering the last ``seconds`` up to ``now``."""
        last = int(now // self.slot_seconds)
        slots = max(1, min(self.size, math.ceil(seconds / self.slot_seconds)))
        return last - slots + 1, last


class WindowedCounter:
    """A count per time slot, plus the total of slots already recycled."""

    __slots__ = ("_retired", "_values", "clock")

    def __init__(
        self,
        horizon: float = 300.0,
        slot_seconds: float = 1.0,
        now: float = 0.0,
        clock: SlotClock | None = None,
    ) -> None:
        self.clock = clock or SlotClock(horizon, slot_seconds, now)
        self._values: list[float] = [0] * self.clock.size
        self._retired: float = 0
        self.clock.members.append(self)

    @property
    def slot_seconds(self) -> float:
        return self.clock.slot_seconds

    def add(self, amount: float, now: float) -> None:
        index = self.clock.index(now)
        if index < 0:
            with self.clock.lock:
                self._retired += amount
            return
        self._values[index] += amount

    def add_at(self, index: int, amount: float) -> None:
        """Add at a ring position the clock just gave (the per-batch fast path)."""
        self._values[index] += amount

    def _recycle(self, index: int) -> None:
        self._retired += self._values[index]
        self._values[index] = 0

    def total(self) -> float:
        """Everything ever added (monotonic for non-negative amounts)."""
        with self.clock.lock:
            return self._retired + sum(self._values)

    def window(self, seconds: float, now: float) -> float:
        """The sum over the slots of the last ``seconds``."""
        first, last = self.clock.window_stamps(seconds, now)
        with self.clock.lock:
            return sum(v for s, v in zip(self.clock.stamps, self._values, strict=True) if first <= s <= last)

    def take_delta(self) -> dict[str, Any]:
        """Move everything recorded so far out (plain data), leaving the counter empty."""
        with self.clock.lock:
            slots = [[s, v] for s, v in zip(self.clock.stamps, self._values, strict=True) if s >= 0 and v]
            retired = self._retired
            self._values = [0] * self.clock.size
            self._retired = 0
        return {"slot_seconds": self.slot_seconds, "slots": slots, "retired": retired}

    def merge_delta(self, delta: dict[str, Any]) -> None:
        """Add a delta taken from another counter (of any slot length) slot by slot."""
        for stamp, value in delta["slots"]:
            self.add(value, stamp * delta.get("slot_seconds", self.slot_seconds))
        if delta["retired"]:
            with self.clock.lock:
                self._retired += delta["retired"]


class WindowedHistogram:
    """Fixed-bucket histogram per time slot (Prometheus ``le`` semantics) with sum, min and max."""

    __slots__ = ("_counts", "_maxs", "_mins", "_retired", "_sums", "bounds", "clock")

    def __init__(
        self,
        bounds: Sequence[float],
        horizon: float = 300.0,
        slot_seconds: float = 1.0,
        now: float = 0.0,
        clock: SlotClock | None = None,
    ) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if not self.bounds or any(b <= a for a, b in itertools.pairwise(self.bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {list(bounds)}")
        self.clock = clock or SlotClock(horizon, slot_seconds, now)
        size, width = self.clock.size, len(self.bounds) + 1
        self._counts = [[0] * width for _ in range(size)]
        self._sums = [0.0] * size
        self._mins = [math.inf] * size
        self._maxs = [-math.inf] * size
        self._retired = _Totals(width)
        self.clock.members.append(self)

    @property
    def slot_seconds(self) -> float:
        return self.clock.slot_seconds

    def _recycle(self, index: int) -> None:
        counts = self._counts[index]
        if any(counts):
            self._retired.fold(counts, self._sums[index], self._mins[index], self._maxs[index])
            self._counts[index] = [0] * len(counts)
            self._sums[index] = 0.0
            self._mins[index] = math.inf
            self._maxs[index] = -math.inf

    def observe(self, value: float, now: float) -> None:
        """Record one value."""
        index = self.clock.index(now)
        if index < 0:
            with self.clock.lock:
                self._retired.add(bisect_left(self.bounds, value), value)
            return
        self.add_at(index, value)

    def add_at(self, index: int, value: float) -> None:
        """Record one value at a ring position the clock just gave (the per-batch fast path)."""
        self._counts[index][bisect_left(self.bounds, value)] += 1
        self._sums[index] += value
        if value < self._mins[index]:
            self._mins[index] = value
        if value > self._maxs[index]:
            self._maxs[index] = value

    def observe_many(self, values: Sequence[float], now: float) -> None:
        """Record several values at once (a batch's worth); ``values`` must not be empty."""
        index = self.clock.index(now)
        if index < 0:
            with self.clock.lock:
                for value in values:
                    self._retired.add(bisect_left(self.bounds, value), value)
            return
        self.add_many_at(index, values)

    def add_many_at(self, index: int, values: Sequence[float]) -> None:
        """Record several values at a ring position the clock just gave."""
        counts = self._counts[index]
        bounds = self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self._sums[index] += sum(values)
        low, high = min(values), max(values)
        if low < self._mins[index]:
            self._mins[index] = low
        if high > self._maxs[index]:
            self._maxs[index] = high

    def add_counts(self, counts: Iterable[int], total: float, low: float, high: float, now: float) -> None:
        """Add bucket counts computed elsewhere (vectorised, or from another process)."""
        index = self.clock.index(now)
        if index < 0:
            with self.clock.lock:
                self._retired.fold(list(counts), total, low, high)
            return
        target = self._counts[index]
        for bucket, count in enumerate(counts):
            if count:
                target[bucket] += int(count)
        self._sums[index] += total
        if low < self._mins[index]:
            self._mins[index] = low
        if high > self._maxs[index]:
            self._maxs[index] = high

    def _collect(self, stamps: tuple[int, int] | None) -> HistogramSnapshot:
        width = len(self.bounds) + 1
        with self.clock.lock:
            if stamps is None:
                merged = list(self._retired.counts)
                total, low, high = self._retired.total, self._retired.minimum, self._retired.maximum
            else:
                merged, total, low, high = [0] * width, 0.0, math.inf, -math.inf
            for index, stamp in enumerate(self.clock.stamps):
                if stamp < 0 or (stamps is not None and not stamps[0] <= stamp <= stamps[1]):
                    continue
                counts = self._counts[index]
                for bucket in range(width):
                    merged[bucket] += counts[bucket]
                total += self._sums[index]
                low = min(low, self._mins[index])
                high = max(high, self._maxs[index])
        count = sum(merged)
        if not count:
            low = high = 0.0
        return HistogramSnapshot(self.bounds, tuple(merged), total, count, low, high)

    def window(self, seconds: float, now: float) -> HistogramSnapshot:
        """What was recorded in the slots of the last ``seconds``."""
        return self._collect(self.clock.window_stamps(seconds, now))

    def cumulative(self) -> HistogramSnapshot:
        """Everything recorded since creation (what exporters publish)."""
        return self._collect(None)

    def take_delta(self) -> dict[str, Any]:
        """Move everything recorded so far out (plain data), leaving the histogram empty."""
        width = len(self.bounds) + 1
        with self.clock.lock:
            slots = []
            for index, stamp in enumerate(self.clock.stamps):
                counts = self._counts[index]
                if stamp < 0 or not any(counts):
                    continue
                slots.append([stamp, counts, self._sums[index], self._mins[index], self._maxs[index]])
                # fresh lists: a writer racing with this (on another thread) loses at most its batch
                self._counts[index] = [0] * width
                self._sums[index] = 0.0
                self._mins[index] = math.inf
                self._maxs[index] = -math.inf
            retired = self._retired
            self._retired = _Totals(width)
        return {
            "bounds": list(self.bounds),
            "slot_seconds": self.slot_seconds,
            "slots": slots,
            "retired": [retired.counts, retired.total, _finite(retired.minimum), _finite(retired.maximum)],
        }

    def merge_delta(self, delta: dict[str, Any]) -> None:
        """Add a delta taken from a histogram with the same bounds."""
        slot_seconds = delta.get("slot_seconds", self.slot_seconds)
        for stamp, counts, total, low, high in delta["slots"]:
            if len(counts) != len(self.bounds) + 1:
                raise ValueError("cannot merge histograms with different bounds")
            self.add_counts(counts, total, low, high, stamp * slot_seconds)
        counts, total, low, high = delta["retired"]
        if any(counts):
            with self.clock.lock:
                self._retired.fold(
                    counts, total, math.inf if low is None else low, -math.inf if high is None else high
                )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Totals:
    """The running totals of recycled slots."""

    __slots__ = ("counts", "maximum", "minimum", "total")

    def __init__(self, width: int) -> None:
        self.counts = [0] * width
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def fold(self, counts: Sequence[int], total: float, low: float, high: float) -> None:
        for bucket, count in enumerate(counts):
            self.counts[bucket] += int(count)
        self.total += total
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)

    def add(self, bucket: int, value: float) -> None:
        self.counts[bucket] += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
