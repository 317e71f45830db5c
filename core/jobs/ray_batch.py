"""``ladle batch --ray``: the same scoring as ``ladle batch``, as Ray Data ``map_batches`` over actors.

Each actor builds the offline server of ``ladle batch`` (the model's runtime, batcher and placement)
and scores whole chunks with the same ``PredictScorer``, so a line of the output is byte for byte
what ``ladle batch`` writes. The driver reads the input in chunks of ``--batch-size`` records and
writes the actors' results in input order (``preserve_order``), so ``--resume`` works alike. With
``RAY_ADDRESS`` set the actors run on that cluster; otherwise a local Ray starts (one CPU per actor,
no dashboard). Needs ``pip install 'ladle[ray]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["ScoringActor", "score_with_ray"]


class ScoringActor:
    """One Ray actor: an offline ladle server for the model and a ``PredictScorer`` over it."""

    def __init__(self, path: str, model: str, version: str | None, id_field: str) -> None:
        from ..commands.batch import offline_server
        from .scoring import PredictScorer

        self.loop = asyncio.new_event_loop()
        self.server = offline_server(Path(path), model)
        self.loop.run_until_complete(self.server.start())
        endpoint = self.server.manager.endpoint(model)
        version = version or endpoint.table.latest
        self.scorer = PredictScorer(
            self.server.manager.admission,
            model,
            version=version,
            signature=endpoint.loaded(version).signature,
            id_field=id_field,
            timeout=3600.0,
        )

    def __call__(self, batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        chunks = [pickle.loads(blob) for blob in batch["chunk"]]

        async def score() -> list[Any]:
            return list(await asyncio.gather(*(self.scorer.score(chunk) for chunk in chunks)))

        results = self.loop.run_until_complete(score())
        output = np.empty(len(results), dtype=object)
        output[:] = [result.output for result in results]
        return {
            "start": np.array([r.start for r in results], dtype=np.int64),
            "count": np.array([r.count for r in results], dtype=np.int64),
            "failed": np.array([r.failed for r in results], dtype=np.int64),
            "output": output,
        }


def score_with_ray(args: argparse.Namespace, done: int) -> int:
    """Score ``args.input`` into ``args.output`` from record ``done`` on; returns the exit status."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError("ladle batch --ray needs Ray Data: pip install 'ladle[ray]'") from None
    from ..commands.batch import offline_server
    from .records import count_records, read_chunks

    probe = offline_server(args.path, args.model)  # the model exists and its config is valid
    signature = probe.plans[0].config.signature  # input names for CSV and Parquet columns, if configured
    asyncio.run(probe.stop())
    names = [spec["name"] for spec in (signature or {}).get("inputs", [])]
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    items = [
        {"chunk": pickle.dumps(chunk)}
        for chunk in read_chunks(
            args.input, args.batch_size, start=done, input_names=names, id_field=args.id_field
        )
    ]
    started = time.monotonic()
    scored = failed = 0
    if items:
        dataset = ray.data.from_items(items).map_batches(
            ScoringActor,
            fn_constructor_args=(str(args.path), args.model, args.version, args.id_field),
            batch_size=1,
            batch_format="numpy",
            concurrency=args.ray_actors,
            num_cpus=1,
        )
        from ..commands.batch import Progress

        total = count_records(args.input)
        with (
            Progress(args.quiet, total, done, f"{args.model} (ray)") as progress,
            args.output.open("ab") as out,
        ):
            for row in dataset.iter_rows():
                out.write(row["output"])
                out.flush()
                scored += int(row["count"])
                failed += int(row["failed"])
                progress.advance(int(row["count"]))
    elapsed = time.monotonic() - started
    print(
        f"scored {scored} records with {args.model} on {args.ray_actors} Ray actors: {failed} failed, "
        f"{elapsed:.1f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0
