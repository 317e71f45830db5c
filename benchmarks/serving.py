"""Side-by-side HTTP serving benchmark: ladle against a hand-written server, a constant route and MLServer.

Every contender serves the same XGBoost breast-cancer classifier (200 trees, depth 6) and answers the
same one-row KServe V2 JSON request under closed-loop load from ``wrk``. Contenders run one at a
time, interleaved round robin within each repetition; medians and ratios are printed at the end.

    python benchmarks/serving.py                       # 5 repetitions of 10 s at 1 and 64 connections
    python benchmarks/serving.py --quick               # 1 repetition of 3 s
    python benchmarks/serving.py --contenders ladle,constant --variant passthrough=PATH/ladle.toml
    python benchmarks/serving.py --json results.json

A ``--variant NAME=ladle.toml`` adds ladle with another configuration; ratios are then printed
against plain ``ladle`` too, which is how telemetry or router settings are compared. A
``--baseline DIR`` adds another ladle (``pip install --no-deps --target DIR`` of an older commit)
as the contender ``baseline``, so two releases are compared in one interleaved run:

    git worktree add /tmp/src COMMIT && pip install --no-deps --target /tmp/old /tmp/src
    python benchmarks/serving.py --contenders ladle --baseline /tmp/old --together --reps 30 --duration 2

``--together`` keeps every server up and alternates short measurements between them: on a machine
whose speed drifts over seconds it puts the builds compared seconds apart, not tens of seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _contenders
from _harness import Contender, Measurement, Summary, run_round_robin, summarise, write_wrk_script
from rich.console import Console
from rich.markup import escape
from rich.table import Table

BUILTIN = ("ladle", "handwritten", "constant", "mlserver")
REFERENCES = ("baseline", "handwritten", "constant", "mlserver")

# Goals printed beside the results (never asserted): at 64 connections ladle reaches 60% of the
# constant route's throughput with p99 under 20 ms; at 1 connection its p50 is within 1.2x of the
# hand-written server's.
HIGH_LOAD = 64
THROUGHPUT_SHARE_OF_CEILING = 0.60
P99_LIMIT_MS = 20.0
SINGLE_P50_FACTOR = 1.2
NOISY_BACKGROUND_CORES = 0.2


@dataclass(frozen=True)
class Ratio:
    subject: str
    reference: str
    connections: int
    throughput: float
    p50: float
    p99: float
    cpu_per_request: float


@dataclass(frozen=True)
class Target:
    subject: str
    goal: str
    value: str
    met: bool | None  # None: not measured


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions (contenders interleaved in each)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per measurement")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load after each start"
    )
    parser.add_argument("--connections", default="1,64", help="comma-separated connection counts")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 3 s (1 s warm-up)")
    parser.add_argument(
        "--together",
        action="store_true",
        help="keep every server up and alternate short measurements between them (a machine whose "
        "speed drifts: e.g. --together --reps 30 --duration 2)",
    )
    parser.add_argument(
        "--contenders", default=",".join(BUILTIN), help=f"comma-separated subset of {', '.join(BUILTIN)}"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a folder holding another ladle (pip install --target); served as the contender 'baseline'",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=LADLE_TOML",
        help="also run ladle with this ladle.toml (repeatable); see benchmarks/README.md",
    )
    parser.add_argument("--skip-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--mlserver-batch-size", type=int, help="override max_batch_size of servers/mlserver")
    parser.add_argument("--mlserver-batch-time", type=float, help="override max_batch_time (seconds)")
    parser.add_argument("--mlserver-workers", type=int, help="override parallel_workers (0: in-process)")
    parser.add_argument(
        "--model-versions", type=int, default=1, help="identical versions 1..N in the repository"
    )
    parser.add_argument(
        "--routing-keys",
        action="store_true",
        help="give every request a random Ladle-Routing-Key header (for sticky routers)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(__file__).resolve().parent / ".cache",
        help="where MLServer's virtual environment is built once",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep model, configs and server logs here (default: temporary)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="save configuration, runs and summaries as JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 3.0, 1.0
    try:
        args.connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--connections: expected integers, got {args.connections!r}")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections: give at least one positive count")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(args.contenders) - set(BUILTIN))
    if unknown:
        parser.error(f"--contenders: unknown {', '.join(unknown)} (choose from {', '.join(BUILTIN)})")
    if args.skip_mlserver and "mlserver" in args.contenders:
        args.contenders.remove("mlserver")
    variants: dict[str, Path] = {}
    for item in args.variant:
        name, _, path = item.partition("=")
        if not name or not path:
            parser.error(f"--variant: expected NAME=PATH, got {item!r}")
        if name in BUILTIN or name in variants:
            parser.error(f"--variant: name {name!r} is taken")
        if not Path(path).is_file():
            parser.error(f"--variant {name}: {path} is not a file")
        variants[name] = Path(path)
    args.variant = variants
    if args.reps < 1 or args.duration < 1:
        parser.error("--reps and --duration must be at least 1")
    return args


def plain(console: Console) -> Callable[[str], None]:
    """Print text from servers and tools as it is (brackets in it are not rich markup)."""

    def report(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    return report


def environment() -> dict[str, Any]:
    """What the figures depend on: machine, interpreter, load generator and library versions."""

    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
        **{
            name: version(name)
            for name in ("ladle", "xgboost", "starlette", "uvicorn", "uvloop", "httptools")
        },
    }


def build_contenders(
    args: argparse.Namespace, model: _contenders.BenchModel, workdir: Path, console: Console
) -> tuple[list[Contender], dict[str, str]]:
    repository = _contenders.write_repository(workdir / "repository", model, args.model_versions)
    contenders: list[Contender] = []
    unavailable: dict[str, str] = {}
    for name in args.contenders:
        if name == "ladle":
            contenders.append(
                _contenders.ladle("ladle", repository, model, "ladle serve <repository>, zero-config")
            )
        elif name == "handwritten":
            contenders.append(_contenders.handwritten(model))
        elif name == "constant":
            contenders.append(_contenders.constant(model))
        elif name == "mlserver":
            try:
                executable = _contenders.mlserver_environment(args.cache_dir, report=plain(console))
            except (_contenders.Unavailable, OSError) as exc:
                unavailable["mlserver"] = str(exc)
                console.print(f"[yellow]MLServer left out:[/] {escape(str(exc))}")
                continue
            contenders.append(
                _contenders.mlserver(
                    executable,
                    model,
                    workdir,
                    max_batch_size=args.mlserver_batch_size,
                    max_batch_time=args.mlserver_batch_time,
                    parallel_workers=args.mlserver_workers,
                )
            )
    if args.baseline is not None:
        baseline = _contenders.ladle(
            "baseline", repository, model, f"ladle from {args.baseline}, zero-config", args.baseline
        )
        contenders.append(dataclasses.replace(baseline, role="reference"))
    for name, config in args.variant.items():
        contenders.append(_contenders.ladle_variant(name, config, repository, workdir, model))
    return contenders, unavailable


def ratios(summaries: list[Summary], contenders: Sequence[Contender]) -> list[Ratio]:
    """Each ladle contender against each reference, and ladle variants against plain ladle."""
    by_key = {(s.contender, s.connections): s for s in summaries}
    names = [c.name for c in contenders]
    subjects = [c.name for c in contenders if c.role == "ladle"]
    found: list[Ratio] = []
    for subject in subjects:
        references = [r for r in REFERENCES if r in names]
        if subject != "ladle" and "ladle" in names:
            references.insert(0, "ladle")
        for reference in references:
            for (name, count), mine in by_key.items():
                theirs = by_key.get((reference, count))
                if name != subject or theirs is None:
                    continue
                found.append(
                    Ratio(
                        subject,
                        reference,
                        count,
                        _divide(mine.throughput, theirs.throughput),
                        _divide(mine.p50_ms, theirs.p50_ms),
                        _divide(mine.p99_ms, theirs.p99_ms),
                        _divide(mine.cpu_us_per_request, theirs.cpu_us_per_request),
                    )
                )
    return found


def paired_ratios(measurements: Sequence[Measurement], contenders: Sequence[Contender]) -> list[Ratio]:
    """``ratios`` within each repetition, then their median over repetitions: with ``--together``
    the contenders of one repetition ran seconds apart, so each ratio is taken in one phase of the
    machine."""
    by_repetition: dict[int, list[Measurement]] = {}
    for m in measurements:
        by_repetition.setdefault(m.repetition, []).append(m)
    groups: dict[tuple[str, str, int], list[Ratio]] = {}
    for runs in by_repetition.values():
        for r in ratios(summarise(runs), contenders):
            groups.setdefault((r.subject, r.reference, r.connections), []).append(r)
    return [
        Ratio(
            subject,
            reference,
            count,
            *(
                _median_of_known(getattr(r, metric) for r in found)
                for metric in ("throughput", "p50", "p99", "cpu_per_request")
            ),
        )
        for (subject, reference, count), found in groups.items()
    ]


def _median_of_known(values: Iterable[float]) -> float:
    """The median of the values that are not NaN (a run with no answers has none), else NaN."""
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else float("nan")


def _divide(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def targets(summaries: list[Summary], contenders: Sequence[Contender]) -> list[Target]:
    by_key = {(s.contender, s.connections): s for s in summaries}
    found: list[Target] = []
    for subject in (c.name for c in contenders if c.role == "ladle"):
        high, ceiling = by_key.get((subject, HIGH_LOAD)), by_key.get(("constant", HIGH_LOAD))
        goal = f"{HIGH_LOAD} conn: req/s >= {THROUGHPUT_SHARE_OF_CEILING:.0%} of constant"
        if high and ceiling:
            share = _divide(high.throughput, ceiling.throughput)
            found.append(Target(subject, goal, f"{share:.0%}", share >= THROUGHPUT_SHARE_OF_CEILING))
        else:
            found.append(Target(subject, goal, "not measured", None))
        goal = f"{HIGH_LOAD} conn: p99 < {P99_LIMIT_MS:g} ms"
        if high:
            found.append(Target(subject, goal, f"{high.p99_ms:.1f} ms", high.p99_ms < P99_LIMIT_MS))
        else:
            found.append(Target(subject, goal, "not measured", None))
        single, baseline = by_key.get((subject, 1)), by_key.get(("handwritten", 1))
        goal = f"1 conn: p50 <= {SINGLE_P50_FACTOR:g}x hand-written"
        if single and baseline:
            factor = _divide(single.p50_ms, baseline.p50_ms)
            found.append(Target(subject, goal, f"{factor:.2f}x", factor <= SINGLE_P50_FACTOR))
        else:
            found.append(Target(subject, goal, "not measured", None))
    return found


def print_results(
    console: Console,
    summaries: list[Summary],
    found_ratios: list[Ratio],
    found_targets: list[Target],
    failures: dict[str, str],
    paired: bool = False,
) -> None:
    table = Table(title="Medians over repetitions", title_justify="left")
    for column in (
        "contender",
        "conns",
        "runs",
        "req/s",
        "req/s min-max",
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
            f"{s.throughput_min:,.0f}-{s.throughput_max:,.0f}",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.cpu_us_per_request:.0f}",
            f"{s.other_cores:.2f}",
            str(s.errors) if s.errors else "",
        )
    console.print(table)
    busiest = max((s.other_cores for s in summaries), default=0.0)
    if busiest > NOISY_BACKGROUND_CORES:
        console.print(
            f"[yellow]note:[/] up to {busiest:.2f} cores were busy outside the servers and wrk "
            "(bg cores): other work on this machine skews these figures; compare ratios, or rerun when idle"
        )
    if found_ratios:
        table = Table(
            title=(
                "Medians of the ratios within each repetition, subject / reference"
                if paired
                else "Ratios of medians, subject / reference"
            ),
            caption="req/s: above 1x is better; p50, p99, CPU/req: below 1x is better",
            title_justify="left",
            caption_justify="left",
        )
        for column in ("subject", "vs", "conns", "req/s", "p50", "p99", "CPU/req"):
            table.add_column(column, justify="left" if column in ("subject", "vs") else "right")
        for r in found_ratios:
            table.add_row(
                r.subject,
                r.reference,
                str(r.connections),
                *(f"{v:.2f}x" for v in (r.throughput, r.p50, r.p99, r.cpu_per_request)),
            )
        console.print(table)
    if found_targets:
        table = Table(title="Targets (printed, not asserted)", title_justify="left")
        for column in ("subject", "goal", "measured", "status"):
            table.add_column(column)
        labels = {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]n/a[/]"}
        for t in found_targets:
            table.add_row(t.subject, t.goal, t.value, labels[t.met])
        console.print(table)
    for name, reason in failures.items():
        console.print(f"[red]{name} failed:[/] {escape(reason)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 132)  # keep tables whole in logs and pipes
    with tempfile.TemporaryDirectory(prefix="ladle-serving-bench-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = _contenders.build_model(workdir / "model")
        contenders, unavailable = build_contenders(args, model, workdir, console)
        if not contenders:
            console.print("[red]nothing to run[/]")
            return 1
        body = _contenders.v2_body(model.row)
        script = write_wrk_script(
            workdir / "request.lua", body, key_header="Ladle-Routing-Key" if args.routing_keys else None
        )
        facts = environment()
        console.print(
            f"[bold]serving benchmark[/]: {args.reps} x {args.duration:g} s at "
            f"{args.connections} connections, {facts['cpus']} CPUs, Python {facts['python']}, {facts['wrk']}"
        )
        for contender in contenders:
            console.print(f"  {contender.name:>12}: {contender.description}", markup=False)
        result = run_round_robin(
            contenders,
            script=script,
            connections=args.connections,
            repetitions=args.reps,
            duration=args.duration,
            warmup=args.warmup,
            log_dir=workdir / "logs",
            report=plain(console),
            together=args.together,
        )
        failures = {**unavailable, **result.failures}
        summaries = summarise(result.measurements)
        if args.together:
            found_ratios = paired_ratios(result.measurements, contenders)
        else:
            found_ratios = ratios(summaries, contenders)
        found_targets = targets(summaries, contenders)
        print_results(console, summaries, found_ratios, found_targets, failures, paired=args.together)
        if args.json:
            document = {
                "config": {
                    "reps": args.reps,
                    "together": args.together,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "connections": args.connections,
                    "wrk_threads": {c: 1 if c <= 1 else 2 for c in args.connections},
                    "model": {
                        "trees": 200,
                        "depth": 6,
                        "objective": "binary:logistic",
                        "versions": args.model_versions,
                    },
                    "request_bytes": len(body),
                },
                "environment": facts,
                "contenders": {c.name: {"role": c.role, "description": c.description} for c in contenders},
                **result.to_json(),
                "failures": failures,
                "summary": [asdict(s) for s in summaries],
                "ratios": [asdict(r) for r in found_ratios],
                "targets": [asdict(t) for t in found_targets],
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
            console.print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
