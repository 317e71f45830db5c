"""Batch scoring: ``ladle batch`` against the runtime in a plain loop and the online server at its
best, and online p99 with and without a job running on the same server.

Model: the XGBoost classifier of ``serving.py`` (breast cancer, 200 trees, depth 6, one thread).
Input: JSON Lines of ``{"input": [30 features]}`` records (the data set's rows, repeated).

Offline rows/s, each contender a subprocess scoring the same file into the same output lines
(``{"line": n, "outputs": {"predict": p}}``), timed from the first record read to the last line
written (model loading excluded):

- ``plain loop``: the ``xgboost`` runtime called directly, batch after batch of ``--batch-size``
  records: read lines, parse, stack, predict, write. The same work as ``ladle batch`` with nothing
  in between; its predict-only rate (arrays parsed beforehand) is printed as the model's ceiling;
- ``ladle batch``: the command, with the model's batcher taking ``--batch-size`` rows;
- ``online``: ``ladle serve`` with the same batcher, ``wrk`` POSTing ``--batch-size`` records per
  ``/api/v1/models/bc/predict`` request at 2 and 4 connections (the better is reported).

Online p99: ``ladle serve`` with ``[jobs]`` on; ``wrk`` at ``--connections`` connections sends
one-row V2 requests to ``bc`` for ``--duration`` seconds, alone, while a job scores a server-side
file of ``--job-rows`` records on the same model, while it scores them on ``bc2``, a second copy
of the model with no online traffic (each job started before the load, checked to be running
after it), or while a job just posted still reads that file into its store. Background work is
paced server-wide and input files are read by a process of their own, so neither the job
elsewhere nor the reading may cost the online model its latency either. Before each window the
benchmark writes out what its set-up left dirty in the page cache (``os.sync``; a job reads its
whole input into the job store before it scores), so the kernel's write-back of one window's
set-up, half a minute later, never lands in another window.

The p99 server and its load generator run on CPUs of their own (``wrk`` and this script on the
last CPU, the server on the others; ``--no-pin`` shares them all), as a server and its clients do
on separate machines. Sharing them, the job's reader process and store writes run beside ``wrk``
too, and the client's p99 then includes ``wrk``'s own delays.

Repetitions interleave the contenders (the order rotates), medians are reported. The CPUs may be
shared: only the side-by-side ratios mean much.

    .venv/bin/python benchmarks/batch_scoring.py            # 3 + 10 repetitions (~5 min)
    .venv/bin/python benchmarks/batch_scoring.py --quick    # 1 repetition
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _contenders import build_model, v2_body
from _harness import free_port, run_wrk, write_wrk_script

LADLE = [sys.executable, "-m", "ladle.cli"]


def plain_loop(source: Path, output: Path, model_dir: Path, batch: int) -> dict[str, float]:
    """The runtime in a plain loop (run in its own process: ``batch_scoring.py plain ...``)."""
    from ladle import Batch, RuntimeSpec
    from ladle.http.ladle_api import records_to_arrays
    from ladle.plugins.runtimes.xgboost.runtime import XGBoostRuntime

    runtime = XGBoostRuntime(RuntimeSpec("xgboost", str(model_dir), model="bc", version="1", threads=1))
    runtime.load()
    signature = runtime.signature()
    option = orjson.OPT_APPEND_NEWLINE
    rows = 0
    started = time.perf_counter()
    with source.open("rb") as f, output.open("wb") as out:
        lines: list[bytes] = []

        def flush() -> None:
            nonlocal rows
            arrays = records_to_arrays([orjson.loads(line) for line in lines], signature)
            outputs = runtime.predict(Batch.of(arrays))
            columns = {name: array.tolist() for name, array in outputs.items()}
            out.write(
                b"".join(
                    orjson.dumps(
                        {"line": rows + i + 1, "outputs": {n: c[i] for n, c in columns.items()}},
                        option=option,
                    )
                    for i in range(len(lines))
                )
            )
            out.flush()
            rows += len(lines)
            lines.clear()

        for line in f:
            lines.append(line)
            if len(lines) == batch:
                flush()
        if lines:
            flush()
    seconds = time.perf_counter() - started
    with source.open("rb") as f:  # the ceiling: predict alone, on arrays parsed beforehand
        parsed = [
            records_to_arrays([orjson.loads(line) for line in chunk], signature)
            for chunk in _chunks(f, batch)
        ]
    began = time.perf_counter()
    for arrays in parsed:
        runtime.predict(Batch.of(arrays))
    return {"rows": rows, "seconds": seconds, "predict_only": rows / (time.perf_counter() - began)}


def _chunks(f: Any, size: int) -> Any:
    chunk: list[bytes] = []
    for line in f:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_plain(work: Path, batch: int) -> tuple[float, float]:
    out = work / "plain.out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "plain",
            str(work / "in.jsonl"),
            str(out),
            str(work / "models" / "bc" / "1"),
            str(batch),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["rows"] / result["seconds"], result["predict_only"]


def run_ladle_batch(work: Path, batch: int) -> float:
    out = work / "ladle.out.jsonl"
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [
            *LADLE,
            "batch",
            str(work / "ladle.toml"),
            "bc",
            "--input",
            str(work / "in.jsonl"),
            "--output",
            str(out),
            "--batch-size",
            str(batch),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    found = re.search(r"scored (\d+) records.*?([\d.]+) s, ([\d,]+) rows/s", done.stderr)
    assert found, done.stderr
    if (work / "plain.out.jsonl").exists():
        assert out.read_bytes() == (work / "plain.out.jsonl").read_bytes(), (
            "ladle batch and the loop disagree"
        )
    return float(found[3].replace(",", ""))


class Served:
    """``ladle serve`` in a subprocess on a free port."""

    def __init__(self, config: Path, cpus: set[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*LADLE, "serve", str(config), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if cpus:  # before the interpreter starts a thread: each thread and child inherits it
            os.sched_setaffinity(self.process.pid, cpus)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("ladle serve did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_online(work: Path, batch: int, duration: float, records: list[Any]) -> float:
    server = Served(work / "ladle.toml")
    try:
        script = write_wrk_script(work / "batch.lua", orjson.dumps({"inputs": records[:batch]}))
        best = 0.0
        for connections in (2, 4):
            load = run_wrk(f"{server.url}/api/v1/models/bc/predict", script, connections, duration)
            if load.error_count:
                raise RuntimeError(f"online load had errors: {load.errors}")
            best = max(best, load.throughput * batch)
        return best
    finally:
        server.stop()


#: The online p99 runs: no job, a job scoring on the online model, one scoring on the other model,
#: and one still reading its input file into the job store.
KINDS = ("alone", "job", "elsewhere", "reading")


def _start_job(client: httpx.Client, kind: str) -> tuple[dict[str, Any], int]:
    """Start a job for a run of ``kind``; returns it and its records done when the load starts."""
    model = "bc2" if kind == "elsewhere" else "bc"
    job = client.post(f"/api/v1/models/{model}/jobs", json={"input_file": "job.jsonl"}).json()
    if kind == "reading":
        return job, 0
    while (state := client.get(f"/api/v1/jobs/{job['id']}").json())["progress"]["done"] == 0:
        assert state["status"] in ("queued", "running"), state
        time.sleep(0.05)
    return job, state["progress"]["done"]


def cpu_split(pin: bool) -> tuple[set[int], set[int]] | None:
    """(the server's CPUs, the load generator's) when pinning is asked for and possible."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (set(cpus[:-1]), {cpus[-1]}) if len(cpus) > 1 else None


def online_p99(work: Path, model_row: np.ndarray, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(kind of run, p99 ms, job rows/s during the window), interleaved."""
    split = cpu_split(args.pin)
    mine = os.sched_getaffinity(0) if split else None
    server = Served(work / "jobs.toml", split[0] if split else None)
    if split:
        os.sched_setaffinity(0, split[1])  # wrk, started from here, inherits it
        print(f"  server on CPUs {sorted(split[0])}, load generator on {sorted(split[1])}")
    runs: list[tuple[str, float, float]] = []
    try:
        script = write_wrk_script(work / "v2.lua", v2_body(model_row))
        url = f"{server.url}/v2/models/bc/infer"
        run_wrk(url, script, args.connections, 2)  # warm-up
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for rep in range(args.p99_reps):
                shift = rep % len(KINDS)
                for kind in KINDS[shift:] + KINDS[:shift]:
                    if kind == "reading":
                        os.sync()
                    job, before = _start_job(client, kind) if kind != "alone" else (None, 0)
                    if kind != "reading":
                        os.sync()
                    began = time.monotonic()
                    load = run_wrk(url, script, args.connections, args.duration)
                    rate = 0.0
                    if job is not None:
                        state = client.get(f"/api/v1/jobs/{job['id']}").json()
                        rate = (state["progress"]["done"] - before) / (time.monotonic() - began)
                        if kind == "reading" and state["progress"]["total"] is not None:
                            print(
                                "  note: the job read all its input during the window; give more --job-rows"
                            )
                        elif kind != "reading" and state["status"] != "running":
                            print(
                                f"  note: the job ended during the window ({state['status']}); "
                                "give more --job-rows"
                            )
                        client.delete(f"/api/v1/jobs/{job['id']}")
                    runs.append((kind, load.p99_ms, rate))
                    print(
                        f"  p99 {kind:9s} rep {rep + 1}: {load.p99_ms:.2f} ms at {load.throughput:,.0f} req/s"
                        + (f", job {rate:,.0f} rows/s" if job else "")
                    )
    finally:
        server.stop()
        if mine:
            os.sched_setaffinity(0, mine)
    return runs


def write_configs(work: Path, batch: int) -> None:
    batcher = f'batcher = {{ name = "dynamic", max_batch_size = {batch} }}\n'
    (work / "ladle.toml").write_text(f'[server]\nrepository = "models"\n[models.bc]\n{batcher}')
    (work / "jobs.toml").write_text(
        f'[server]\nrepository = "models"\n[models.bc]\n{batcher}[models.bc2]\n{batcher}'
        f'[jobs]\nstore = "jobs.sqlite3"\ninput_dirs = ["."]\n'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000, help="records in the offline input")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of each wrk run")
    parser.add_argument(
        "--p99-reps", type=int, default=10, help="repetitions of the online p99 runs (a p99 is noisy)"
    )
    parser.add_argument("--connections", type=int, default=2, help="connections of the online p99 load")
    parser.add_argument("--job-rows", type=int, default=300_000, help="records of the job in the p99 runs")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the p99 server and its load generator share every CPU",
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, smaller inputs")
    parser.add_argument("--workdir", type=Path, help="keep the model, inputs and outputs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.p99_reps, args.rows, args.job_rows, args.duration = 1, 1, 50_000, 100_000, 2.0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ladle-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "trained")
    for name in ("bc", "bc2"):
        (work / "models" / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.path, work / "models" / name / "1" / "model.ubj")
    write_configs(work, args.batch_size)
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data
    records = [{"input": rows[i % len(rows)].tolist()} for i in range(max(args.rows, args.job_rows))]
    (work / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[: args.rows]))
    (work / "job.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[: args.job_rows]))
    print(f"workdir {work}; {args.rows} records, batches of {args.batch_size}; {os.cpu_count()} CPUs")

    offline: dict[str, list[float]] = {"plain loop": [], "ladle batch": [], "online": []}
    ceiling: list[float] = []
    contenders = list(offline)
    for rep in range(args.reps):
        order = contenders[rep % 3 :] + contenders[: rep % 3]
        for name in order:
            if name == "plain loop":
                rate, predict_only = run_plain(work, args.batch_size)
                ceiling.append(predict_only)
            elif name == "ladle batch":
                rate = run_ladle_batch(work, args.batch_size)
            else:
                rate = run_online(work, args.batch_size, args.duration, records)
            offline[name].append(rate)
            print(f"  rep {rep + 1} {name:12s} {rate:>10,.0f} rows/s")
    runs = online_p99(work, model.row, args)

    medians = {name: statistics.median(values) for name, values in offline.items()}
    print("\noffline scoring, rows/s (median of", args.reps, "interleaved repetitions)")
    for name, value in medians.items():
        print(f"  {name:12s} {value:>10,.0f}   {value / medians['plain loop']:.2f}x the plain loop")
    print(f"  (predict alone, no parsing or writing: {statistics.median(ceiling):,.0f} rows/s)")
    p99 = {k: statistics.median(p for kind, p, _ in runs if kind == k) for k in KINDS}
    job_rate = {k: statistics.median(r for kind, _, r in runs if kind == k) for k in KINDS[1:]}
    alone, busy = p99["alone"], p99["job"]
    print(f"\nonline p99 at {args.connections} connections (median of {args.p99_reps}): alone {alone:.2f} ms")
    for kind, where in (
        ("job", "scoring on the same model"),
        ("elsewhere", "scoring on the other model"),
        ("reading", "reading its input file"),
    ):
        scored = f"; the job scored {job_rate[kind]:,.0f} rows/s meanwhile" if kind != "reading" else ""
        print(f"  with a job {where:27s} {p99[kind]:.2f} ms ({p99[kind] / alone:.2f}x){scored}")
    ratio = medians["ladle batch"] / medians["plain loop"]
    print(
        f"\ntargets: ladle batch >= 0.90x the plain loop: {ratio:.2f}x "
        f"{'met' if ratio >= 0.9 else 'NOT met'}; "
        f"online p99 with a job <= 1.1x: {busy / alone:.2f}x {'met' if busy / alone <= 1.1 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        result = plain_loop(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(result))
        raise SystemExit(0)
    raise SystemExit(main())
