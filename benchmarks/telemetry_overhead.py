"""Cost of the telemetry observer per request, side by side with a no-op observer.

The batcher calls its observer once per batch; this times those calls alone, for batches of 1
and of 32 requests, with the telemetry features switched on one at a time:

- ``null``: ``ladle.batching.NullObserver`` (the call itself; the baseline);
- ``stats``: the stats layer (what runs with the default configuration);
- ``+traces, none sampled``: traces on, no request sampled (the scan for sampled requests);
- ``+traces, 1% sampled``: traces on, 1 request in 100 sampled (spans built, exporter discards);
- ``+logs 100%``: inference logs on, every request recorded (SQLite writer thread running);
- ``+quality``: output distributions and drift (vectorised, per batch);
- ``OTel per request``: for reference, what the design avoids: one OpenTelemetry counter add and
  two histogram records per request, 3 attributes each.

Run: ``python benchmarks/telemetry_overhead.py [--requests 64000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ladle.batching import NullObserver
from ladle.envelope import Arrays, InferenceRequest, TraceContext
from ladle.telemetry import Telemetry

Batch = tuple[list[InferenceRequest], float, float, list[str | None], list[Arrays | None]]
Feed = Callable[[Batch], None]


class DiscardSpans(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_batches(size: int, count: int, sampled_every: int = 0) -> list[Batch]:
    """``count`` batches of ``size`` one-row requests; every ``sampled_every``-th request is traced."""
    rng = np.random.default_rng(0)
    now = time.monotonic()
    batches: list[Batch] = []
    index = 0
    for _ in range(count):
        requests = []
        for _ in range(size):
            index += 1
            trace = None
            if sampled_every and index % sampled_every == 0:
                trace = TraceContext(f"{index:032x}", "", True)
            request = InferenceRequest("bench", {"x": rng.random((1, 30), dtype=np.float32)}, trace=trace)
            request.arrival = now - 0.004
            requests.append(request)
        errors: list[str | None] = [None] * size
        outputs: list[Arrays | None] = [{"y": rng.random((1, 1), dtype=np.float32)} for _ in range(size)]
        batches.append((requests, now - 0.002, now, errors, outputs))
    return batches


def observer_feed(observer: Any) -> Feed:
    def feed(batch: Batch) -> None:
        observer.batch_done(batch[0], batch[1], batch[2], batch[3])

    return feed


def observer_feed_with_outputs(observer: Any) -> Feed:
    def feed(batch: Batch) -> None:
        observer.batch_done(batch[0], batch[1], batch[2], batch[3], outputs=batch[4])

    return feed


def naive_otel_feed() -> tuple[Feed, Callable[[], None]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    meter = provider.get_meter("bench")
    counter = meter.create_counter("requests")
    latency = meter.create_histogram("request.duration", unit="s")
    queued = meter.create_histogram("queue.duration", unit="s")

    def feed(batch: Batch) -> None:
        requests, started, finished, errors, _ = batch
        for request, error in zip(requests, errors, strict=True):
            attributes = {"model": request.model, "version": "1", "error.type": error or ""}
            counter.add(1, attributes)
            latency.record(finished - request.arrival, attributes)
            queued.record(started - request.arrival, attributes)

    return feed, provider.shutdown


def time_feed(feed: Feed, batches: list[Batch], repeat: int) -> float:
    """Best of ``repeat`` runs, in microseconds per request."""
    requests = sum(len(b[0]) for b in batches)
    for batch in batches[: max(1, len(batches) // 10)]:  # warm up (and fill quality's reference window)
        feed(batch)
    results = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        for batch in batches:
            feed(batch)
        elapsed = time.perf_counter() - start
        gc.enable()
        results.append(elapsed / requests * 1e6)
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64_000, help="requests per timed run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        base = {"resources": {"enabled": False}}
        plain = Telemetry(base)
        traced = Telemetry({**base, "traces": {"enabled": True}}, span_exporter=DiscardSpans())
        logged = Telemetry({**base, "logs": {"enabled": True, "path": str(Path(folder) / "logs.db")}})
        quality = Telemetry({**base, "quality": {"enabled": True, "reference_rows": 1000}})
        naive, naive_close = naive_otel_feed()
        try:
            print(f"{'observer':<24} {'batch':>5} {'µs/request':>11} {'added µs':>9} {'x null':>7}")
            for size in (1, 32):
                count = max(1, args.requests // size)
                batches = make_batches(size, count)
                sampled = make_batches(size, count, sampled_every=100)
                variants: list[tuple[str, Feed, list[Batch]]] = [
                    ("null", observer_feed(NullObserver()), batches),
                    ("stats", observer_feed(plain.observer_for("bench", f"s{size}")), batches),
                    (
                        "+traces, none sampled",
                        observer_feed(traced.observer_for("bench", f"t{size}")),
                        batches,
                    ),
                    ("+traces, 1% sampled", observer_feed(traced.observer_for("bench", f"t{size}")), sampled),
                    ("+logs 100%", observer_feed(logged.observer_for("bench", f"l{size}")), batches),
                    (
                        "+quality",
                        observer_feed_with_outputs(quality.observer_for("bench", f"q{size}")),
                        batches,
                    ),
                    ("OTel per request", naive, batches),
                ]
                baseline = 0.0
                for name, feed, data in variants:
                    cost = time_feed(feed, data, args.repeat)
                    if name == "null":
                        baseline = cost
                    ratio = cost / baseline if baseline else float("nan")
                    print(f"{name:<24} {size:>5} {cost:>11.3f} {cost - baseline:>9.3f} {ratio:>7.1f}")
                print()
            written = logged.logs.written if logged.logs else 0
            dropped = logged.logs.dropped if logged.logs else 0
            print(f"inference log: {written} records written, {dropped} dropped (buffer full)")
            timings = [
                time_feed(observer_feed(plain.observer_for("bench", "p")), make_batches(1, 2000), 3)
                for _ in range(3)
            ]
            print(f"stats, batch of 1, spread of 3 runs: {statistics.pstdev(timings):.3f} µs")
        finally:
            naive_close()
            for telemetry in (plain, traced, logged, quality):
                telemetry.close()


if __name__ == "__main__":
    main()
