"""``ladle batch REPO_OR_CONFIG MODEL --input FILE --output FILE``: offline scoring, no server.

The model loads as ``ladle serve`` would load it (the same runtime, batcher, placement and
instances) and the input's records go through the same admission pipeline, as low-priority job
requests of ``--batch-size`` records, with enough of them in flight to keep every instance busy.
The input is read, checked and stacked into arrays ahead of the scoring by a reader process
(``ladle.jobs.reader``; a ``.npy`` array is sliced in place). The output gets one JSON line per
input record, in input order::

    {"line": 1, "outputs": {"probability": 0.97}}
    {"line": 2, "id": "a7", "error": {"message": "...", "code": "invalid_request", "status": 400}}

``--resume`` continues an output that a crash or ``kill -9`` left behind: it keeps the complete
lines, drops a torn last line, and scores only the records after them, so no line is ever
duplicated. ``--ray`` scores with Ray Data ``map_batches`` over actors instead (``ladle.jobs.ray_batch``).
Exit status: 0 when every record has its line (some may be errors), 1 when the input as a whole
cannot be read or the model did not load, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from ..errors import LadleError
from ..server import Server, load_config

__all__ = ["configure", "resume_point", "run"]


class UsageError(Exception):
    """A mistake in the command line or its files (exit status 2)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, help="a ladle.toml, a directory holding one, or a model repository"
    )
    parser.add_argument("model", help="the model to score with")
    parser.add_argument("--input", required=True, type=Path, help="records: .jsonl, .csv, .parquet or .npy")
    parser.add_argument("--output", required=True, type=Path, help="JSON Lines, one line per input record")
    parser.add_argument("--version", help="the version to score with (default: the newest served one)")
    parser.add_argument("--batch-size", type=int, default=32, help="records per request (default: 32)")
    parser.add_argument("--resume", action="store_true", help="continue an output a crash left behind")
    parser.add_argument(
        "--concurrency", type=int, help="requests in flight (default: two per instance, plus one)"
    )
    parser.add_argument("--id-field", default="id", help="the record key that names a record (default: id)")
    parser.add_argument("--ray", action="store_true", help="score with Ray Data map_batches over actors")
    parser.add_argument("--ray-actors", type=int, default=2, help="actors with --ray (default: 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def resume_point(output: Path) -> int:
    """How many complete lines ``output`` holds, after cutting a torn last line off; checks that
    line ``n`` is the record of line ``n`` (``UsageError`` if the file is not such an output)."""
    if not output.exists():
        return 0
    with output.open("r+b") as f:
        f.seek(0, 2)
        size = end = f.tell()
        while end > 0:  # find the end of the last complete line
            step = min(end, 1 << 16)
            f.seek(end - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                end = end - step + cut + 1
                break
            end -= step
        if end != size:
            f.truncate(end)
        f.seek(0)
        lines = 0
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
        if not lines:
            return 0
        f.seek(max(0, end - (1 << 20)))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        position = orjson.loads(last).get("line")
    except (orjson.JSONDecodeError, AttributeError):
        position = None
    if position != lines:
        raise UsageError(
            f"{output}: its last line is not the result of input line {lines}; "
            "is it the output of this input? (remove it to start afresh)"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        if args.batch_size < 1 or (args.concurrency is not None and args.concurrency < 1):
            raise UsageError("--batch-size and --concurrency must be at least 1")
        if not args.input.is_file():
            raise UsageError(f"{args.input}: no such file")
        if args.output.exists() and not args.resume:
            raise UsageError(f"{args.output} exists: pass --resume to continue it, or remove it")
        done = resume_point(args.output) if args.resume else 0
        if args.ray:
            from ..jobs.ray_batch import score_with_ray

            return score_with_ray(args, done)
        return _event_loop_run(_score(args, done))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """``main`` on uvloop where it is installed (as ``ladle serve`` runs), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def offline_server(path: Path, model: str) -> Server:
    """A server for ``model`` alone: no HTTP, no deployment store, no job store."""
    config = load_config(path)
    config = config.model_copy(
        update={
            "server": config.server.model_copy(update={"state": None}),
            "jobs": config.jobs.model_copy(update={"store": None}),
        }
    )
    server = Server(config)
    plans = [plan for plan in server.plans if plan.name == model]
    if not plans:
        names = ", ".join(plan.name for plan in server.plans) or "none"
        raise UsageError(f"no model {model!r} in {config.repository_path}; its models: {names}")
    server.plans = plans
    return server


async def _score(args: argparse.Namespace, done: int) -> int:
    from ..jobs.reader import open_chunks
    from ..jobs.records import count_records
    from ..jobs.scoring import PredictScorer, ScoredChunk

    total = count_records(args.input)
    server = offline_server(args.path, args.model)
    reader = open_chunks(args.input, args.batch_size, start=done, id_field=args.id_field)
    try:
        await server.start()
        failures = {k: v for k, v in server.manager.failures.items() if k.split("/")[0] == args.model}
        if failures or args.model not in server.manager.models:
            raise UsageError(
                f"model {args.model!r} did not load: {'; '.join(failures.values()) or 'no version'}"
            )
        endpoint = server.manager.endpoint(args.model)
        version = args.version or endpoint.table.latest
        target = endpoint.loaded(version)
        signature = target.signature
        scorer = PredictScorer(
            server.manager.admission,
            args.model,
            version=version,
            signature=signature,
            id_field=args.id_field,
            timeout=3600.0,
        )
        window = args.concurrency or 2 * len(target.replicas.instances) + 1
        reader.begin(signature)
        started = time.monotonic()
        failed = scored = 0
        with (
            Progress(args.quiet, total, done, f"{args.model}/{version}") as progress,
            args.output.open("ab") as out,
        ):

            def write(result: ScoredChunk) -> None:
                nonlocal failed, scored
                out.write(result.output)
                out.flush()
                failed += result.failed
                scored += result.count
                progress.advance(result.count)

            pending: deque[asyncio.Task[ScoredChunk]] = deque()
            async for chunk in reader:
                pending.append(asyncio.get_running_loop().create_task(scorer.score_prepared(chunk)))
                while pending and (len(pending) >= window or pending[0].done()):
                    write(await pending.popleft())
            while pending:
                write(await pending.popleft())
        elapsed = time.monotonic() - started
        rate = scored / elapsed if elapsed > 0 else 0.0
        note = f" (resumed after {done})" if done else ""
        print(
            f"scored {scored} records{note} with {args.model}/{version}: {failed} failed, "
            f"{elapsed:.1f} s, {rate:,.0f} rows/s -> {args.output}",
            file=sys.stderr,
        )
        if scorer.max_rows is not None and scorer.max_rows < args.batch_size:
            print(
                f"note: the model's batcher takes at most {scorer.max_rows} rows a batch; raise its "
                "max_batch_size for larger batches",
                file=sys.stderr,
            )
        return 0
    finally:
        reader.close()
        await server.stop()


class Progress:
    """A rich progress bar on stderr (rows, rows/s, ETA); nothing with ``quiet``."""

    def __init__(self, quiet: bool, total: int, done: int, what: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(what, total=total, completed=done, rate="-")
        self._last = (time.monotonic(), done)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, rows: int) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._task, rows)
        speed = self._bar.tasks[0].speed
        if speed:
            self._bar.update(self._task, rate=f"{speed:,.0f}")
