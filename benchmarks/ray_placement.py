"""Past one machine, measured on one: instances as Ray actors, several fronts, and Ray Serve.

Every contender serves the serving benchmark's XGBoost classifier (200 trees, depth 6) and answers
the same one-row KServe V2 JSON request under closed-loop load from ``wrk``; contenders run one at
a time, interleaved round robin (the order rotates each repetition), and the ratios of medians are
printed at the end:

- ``thread``: ladle, the instance on a thread of the front process (the default);
- ``process``: ladle, the instance in a worker process (``executor = "process"``);
- ``ray``: ladle, the instance a Ray actor (``placement = "ray"``, a local Ray the server starts),
  batches through a Ray compiled graph (the default);
- ``ray-calls``: the same with ``compiled_graph = false``: a plain actor call per batch;
- ``fronts-2``: ladle with ``--workers 2`` (two front processes on the port, a thread each);
- ``ray-serve``: a Ray Serve deployment of the same model behind Ray Serve's HTTP proxy
  (``servers/ray_serve_app.py``, ``@serve.batch`` of up to 32).

Before the HTTP runs, ``transfer`` times how a batch reaches an actor and comes back: numpy arrays
passed in the call (Ray inlines small ones and puts large ones in its object store itself), an
explicit ``ray.put`` per batch, and a compiled graph's shared-memory channels, at 1, 32 and 20,000
rows.

Targets (printed, not asserted): the ray placement adds at most 1 ms to ``thread``'s p50 at one
connection, and serves at least 3x Ray Serve's requests per second at 64 connections.

    python benchmarks/ray_placement.py                 # 3 repetitions of 10 s at 1 and 64 connections
    python benchmarks/ray_placement.py --quick         # 1 repetition of 3 s
    python benchmarks/ray_placement.py --contenders thread,ray --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _contenders
from _harness import Contender, Launch, Summary, run_round_robin, summarise, write_wrk_script
from rich.console import Console
from rich.table import Table

CONTENDERS = ("thread", "process", "ray", "ray-calls", "fronts-2", "ray-serve")
LOW, HIGH = 1, 64
ADDED_P50_LIMIT_MS = 1.0
RAY_SERVE_FACTOR = 3.0
#: A Ray of one's own: loopback addresses only (read when ray is imported, here and in servers).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--connections", default=f"{LOW},{HIGH}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--no-transfer", action="store_true", help="skip the transfer timings")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 3 s, 1 s warm-up")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 3.0, 1.0
    args.connections = [int(c) for c in str(args.connections).split(",")]
    args.contenders = [c for c in str(args.contenders).split(",") if c]
    unknown = sorted(set(args.contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    return args


# contenders ------------------------------------------------------------------------------------------


def _repository(root: Path, model: _contenders.BenchModel, model_toml: str) -> Path:
    repository = _contenders.write_repository(root, model)
    if model_toml:
        (repository / _contenders.MODEL_NAME / "model.toml").write_text(model_toml)
    return repository


def _ladle(
    name: str, repository: Path, model: _contenders.BenchModel, description: str, *extra: str
) -> Contender:
    argv = [*_contenders._ladle_argv(), "serve", str(repository), "--grpc-port", "0", *extra]
    return Contender(
        name=name,
        role="ladle",
        path=_contenders.INFER_PATH,
        launch=lambda port: Launch([*argv, "--port", str(port)], env=dict(LOOPBACK)),
        check=_contenders.ContenderCheck(model, exact=True),
        startup_timeout=240.0,  # a local Ray starts in seconds, more on a busy machine
        description=description,
    )


def build_contenders(names: Sequence[str], model: _contenders.BenchModel, workdir: Path) -> list[Contender]:
    threads = _repository(workdir / "thread", model, "")
    built = {
        "thread": lambda: _ladle("thread", threads, model, "ladle, the instance on a thread (default)"),
        "process": lambda: _ladle(
            "process",
            _repository(workdir / "process", model, 'executor = "process"\n'),
            model,
            "ladle, the instance in a worker process",
        ),
        "ray": lambda: _ladle(
            "ray",
            _repository(workdir / "ray", model, 'placement = { name = "ray", num_cpus = 1 }\n'),
            model,
            "ladle, the instance a Ray actor on a local Ray (a compiled graph)",
        ),
        "ray-calls": lambda: _ladle(
            "ray-calls",
            _repository(
                workdir / "ray-calls",
                model,
                'placement = { name = "ray", num_cpus = 1, compiled_graph = false }\n',
            ),
            model,
            "ladle, the instance a Ray actor on a local Ray (plain actor calls)",
        ),
        "fronts-2": lambda: _ladle(
            "fronts-2", threads, model, "ladle --workers 2: two fronts on one port", "--workers", "2"
        ),
        "ray-serve": lambda: Contender(
            name="ray-serve",
            path=_contenders.INFER_PATH,
            launch=lambda port: Launch(
                [
                    sys.executable,
                    str(_contenders.SERVERS / "ray_serve_app.py"),
                    "--model",
                    str(model.path),
                    "--name",
                    _contenders.MODEL_NAME,
                    "--port",
                    str(port),
                ],
                env=dict(LOOPBACK),
            ),
            check=_contenders.ContenderCheck(model, exact=True),
            startup_timeout=240.0,
            description="Ray Serve 1 replica behind its HTTP proxy, @serve.batch(32, 1 ms)",
        ),
    }
    return [built[name]() for name in names]


# how a batch reaches an actor ---------------------------------------------------------------------------


def transfer_timings(console: Console, calls: int = 300) -> list[dict[str, Any]]:
    """Median round trip of an echo actor: arrays passed in the call, a ``ray.put`` first, and a
    compiled graph (driven from a thread, as the ray placement drives it)."""
    os.environ.update(LOOPBACK)
    import asyncio

    import numpy as np
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, inputs: dict[str, Any]) -> dict[str, Any]:
            return {"y": inputs["x"]}

    rows_list = (1, 32, 20_000)
    found: list[dict[str, Any]] = []
    try:
        actor = Echo.remote()  # type: ignore[attr-defined]
        ray.get(actor.echo.remote({"x": np.zeros((1, 30), np.float32)}))

        async def timed(send: Any) -> float:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await send()
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1e6

        async def measure() -> None:
            for rows in rows_list:
                x = np.random.rand(rows, 30).astype(np.float32)
                inline = await timed(lambda x=x: actor.echo.remote({"x": x}))
                put = await timed(lambda x=x: actor.echo.remote(ray.put({"x": x})))
                found.append({"rows": rows, "bytes": x.nbytes, "inline_us": inline, "put_us": put})

        asyncio.run(measure())
        from ray.dag import InputNode

        with InputNode() as inputs:
            graph = actor.echo.bind(inputs).experimental_compile()
        try:
            for entry in found:
                x = np.random.rand(entry["rows"], 30).astype(np.float32)
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    graph.execute({"x": x}).get(timeout=-1)
                    times.append(time.perf_counter() - started)
                entry["graph_us"] = statistics.median(times) * 1e6
        finally:
            graph.teardown()
    finally:
        ray.shutdown()
    table = Table(title=f"A batch to an actor and back (median of {calls} calls)", title_justify="left")
    for column in (
        "rows",
        "bytes",
        "in the call (us)",
        "ray.put first (us)",
        "compiled graph (us)",
        "graph / in the call",
    ):
        table.add_column(column, justify="right")
    for entry in found:
        table.add_row(
            str(entry["rows"]),
            f"{entry['bytes']:,}",
            f"{entry['inline_us']:.0f}",
            f"{entry['put_us']:.0f}",
            f"{entry['graph_us']:.0f}",
            f"{entry['graph_us'] / entry['inline_us']:.2f}x",
        )
    console.print(table)
    return found


# results ---------------------------------------------------------------------------------------------


def _at(summaries: list[Summary], name: str, connections: int) -> Summary | None:
    return next((s for s in summaries if s.contender == name and s.connections == connections), None)


def print_results(
    console: Console, summaries: list[Summary], failures: dict[str, str]
) -> list[dict[str, Any]]:
    table = Table(title="Medians over repetitions", title_justify="left")
    for column in (
        "contender",
        "conns",
        "runs",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU-us/req",
        "bg cores",
        "errors",
    ):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for s in sorted(summaries, key=lambda s: (s.connections, -s.throughput)):
        table.add_row(
            s.contender,
            str(s.connections),
            str(s.runs),
            f"{s.throughput:,.0f}",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.cpu_us_per_request:.0f}",
            f"{s.other_cores:.2f}",
            str(s.errors) if s.errors else "",
        )
    console.print(table)
    comparisons = []
    for subject, reference in (
        ("ray", "thread"),
        ("ray-calls", "thread"),
        ("ray", "ray-calls"),
        ("process", "thread"),
        ("fronts-2", "thread"),
        ("ray", "ray-serve"),
        ("thread", "ray-serve"),
    ):
        for connections in sorted({s.connections for s in summaries}):
            a, b = _at(summaries, subject, connections), _at(summaries, reference, connections)
            if a is None or b is None or not b.throughput:
                continue
            comparisons.append(
                {
                    "subject": subject,
                    "reference": reference,
                    "connections": connections,
                    "throughput": a.throughput / b.throughput,
                    "p50_added_ms": a.p50_ms - b.p50_ms,
                    "p99": a.p99_ms / b.p99_ms if b.p99_ms else float("nan"),
                    "cpu_per_request": a.cpu_us_per_request / b.cpu_us_per_request
                    if b.cpu_us_per_request
                    else float("nan"),
                }
            )
    if comparisons:
        table = Table(title="Subject against reference (ratios of medians)", title_justify="left")
        for column in ("subject", "vs", "conns", "req/s", "p50 added ms", "p99", "CPU/req"):
            table.add_column(column, justify="left" if column in ("subject", "vs") else "right")
        for c in comparisons:
            table.add_row(
                c["subject"],
                c["reference"],
                str(c["connections"]),
                f"{c['throughput']:.2f}x",
                f"{c['p50_added_ms']:+.2f}",
                f"{c['p99']:.2f}x",
                f"{c['cpu_per_request']:.2f}x",
            )
        console.print(table)
    table = Table(title="Targets (printed, not asserted)", title_justify="left")
    for column in ("goal", "measured", "status"):
        table.add_column(column)
    added = next(
        (
            c
            for c in comparisons
            if (c["subject"], c["reference"], c["connections"]) == ("ray", "thread", LOW)
        ),
        None,
    )
    factor = next(
        (
            c
            for c in comparisons
            if (c["subject"], c["reference"], c["connections"]) == ("ray", "ray-serve", HIGH)
        ),
        None,
    )
    for goal, value, met in (
        (
            f"ray adds <= {ADDED_P50_LIMIT_MS:g} ms to thread's p50 at c={LOW}",
            f"{added['p50_added_ms']:+.2f} ms" if added else "n/a",
            None if added is None else added["p50_added_ms"] <= ADDED_P50_LIMIT_MS,
        ),
        (
            f"ray >= {RAY_SERVE_FACTOR:g}x Ray Serve's req/s at c={HIGH}",
            f"{factor['throughput']:.2f}x" if factor else "n/a",
            None if factor is None else factor["throughput"] >= RAY_SERVE_FACTOR,
        ),
    ):
        table.add_row(goal, value, {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]n/a[/]"}[met])
    console.print(table)
    busiest = max((s.other_cores for s in summaries), default=0.0)
    if busiest > 0.2:
        console.print(
            f"[yellow]note:[/] up to {busiest:.2f} cores were busy outside the servers and wrk: other work "
            "on this machine skews the absolute figures; the interleaved ratios are the result"
        )
    for name, reason in failures.items():
        console.print(f"[red]{name} failed:[/] {reason}")
    return comparisons


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 132)
    document: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    }
    if not args.no_transfer:
        document["transfer"] = transfer_timings(console)
    with tempfile.TemporaryDirectory(prefix="ladle-ray-bench-") as scratch:
        workdir = Path(scratch)
        model = _contenders.build_model(workdir / "model")
        contenders = build_contenders(args.contenders, model, workdir)
        script = write_wrk_script(workdir / "request.lua", _contenders.v2_body(model.row))
        console.print(
            f"[bold]ray placement benchmark[/]: {args.reps} x {args.duration:g} s at {args.connections} "
            f"connections, {os.cpu_count()} CPUs"
        )
        for contender in contenders:
            console.print(f"  {contender.name:>10}: {contender.description}", markup=False)
        result = run_round_robin(
            contenders,
            script=script,
            connections=args.connections,
            repetitions=args.reps,
            duration=args.duration,
            warmup=args.warmup,
            log_dir=workdir / "logs",
            report=lambda line: console.print(line, markup=False, highlight=False),
        )
        summaries = summarise(result.measurements)
        document.update(result.to_json())
        document["comparisons"] = print_results(console, summaries, result.failures)
    if args.json:
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 1 if result.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
