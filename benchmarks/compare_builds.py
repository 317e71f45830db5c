"""Two builds of ladle side by side in one run: a benchmark that prints a JSON table of medians
(``--json PATH``) is run alternately against this checkout and an older install, N times each, and
the medians of the runs are printed with their ratio (this build / the other).

    git worktree add /tmp/old COMMIT && pip install --no-deps --target /tmp/old-ladle /tmp/old
    python benchmarks/compare_builds.py benchmarks/canary_overhead.py --baseline /tmp/old-ladle \\
        --runs 5 -- --repeat 5 --requests 5000

For the HTTP serving benchmark use its own ``--baseline`` (it interleaves per measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _run(script: Path, args: list[str], baseline: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        if baseline is not None:
            env["PYTHONPATH"] = str(baseline.resolve())
        subprocess.run([sys.executable, str(script), *args, "--json", str(out)], env=env, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--baseline", type=Path, required=True, help="folder holding the other ladle")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark, after --")
    args = parser.parse_args()
    rest = [a for a in args.rest if a != "--"]
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "baseline": []}
    for index in range(args.runs):
        order = [("this", None), ("baseline", args.baseline)]
        for name, folder in order if index % 2 == 0 else reversed(order):
            print(f"run {index + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
            runs[name].append(_run(args.benchmark, rest, folder))
    print(f"\nmedians of {args.runs} alternating runs; ratio = this build / baseline")
    for table, rows in runs["this"][0].items():
        print(f"\n{table}")
        for row, columns in rows.items():
            for column in columns:
                mine = statistics.median(r[table][row][column] for r in runs["this"])
                theirs = statistics.median(r[table][row][column] for r in runs["baseline"])
                print(f"   {row:>24} | {column:>14}: {mine:10.3f} vs {theirs:10.3f}  ({mine / theirs:5.3f}x)")


if __name__ == "__main__":
    main()
