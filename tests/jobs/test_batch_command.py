"""``ladle batch`` as a user runs it: a subprocess that scores a file offline; ``--resume`` after
SIGKILL (with a torn last line) skips what is written and duplicates nothing; malformed lines;
every input format; refusals."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jobs_helpers import HERE, write_repository

from ladle.commands.batch import UsageError, resume_point


def ladle_batch(*args: str | Path, wait: bool = True) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "ladle.cli", "batch", *map(str, args)]
    if wait:
        return subprocess.run(argv, env=env, capture_output=True, timeout=300)
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    log = tmp_path / "scored.txt"
    write_repository(
        tmp_path,
        {
            "double": "",
            "slow": f'options = {{ delay = 0.02, log = "{log}" }}\n'
            'batcher = { name = "dynamic", max_batch_size = 10 }\n',
        },
    )
    (tmp_path / "ladle.toml").write_text(
        '[server]\nrepository = "models"\n[plugins]\nmodules = ["jobs_runtime"]\n'
    )
    return tmp_path


def lines(path: Path) -> list[Any]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_scores_a_file_in_input_order_with_malformed_lines_failing_alone(project: Path) -> None:
    source = project / "in.jsonl"
    source.write_text(
        '{"x": [1, 2]}\n{"x": [3\n\n{"id": "r4", "x": [4, 5]}\n[1, 2]\n{"x": [-1, 0]}\n{"x": [6, 7]}\n'
    )
    out = project / "out.jsonl"
    done = ladle_batch(
        project / "ladle.toml", "double", "--input", source, "--output", out, "--batch-size", "4"
    )
    assert done.returncode == 0, done.stderr.decode()
    got = lines(out)
    assert [g["line"] for g in got] == [1, 2, 3, 4, 5, 6, 7]
    assert got[0] == {"line": 1, "outputs": {"y": [2.0, 4.0]}}
    assert "not valid JSON" in got[1]["error"]["message"] and "line 2" in got[1]["error"]["message"]
    assert "empty line" in got[2]["error"]["message"]
    assert got[3] == {"line": 4, "id": "r4", "outputs": {"y": [8.0, 10.0]}}
    assert "JSON object" in got[4]["error"]["message"]
    assert got[5]["error"]["code"] == "invalid_input"  # refused by the runtime: that record only
    assert got[6]["outputs"] == {"y": [12.0, 14.0]}
    assert "4 failed" in done.stderr.decode()


def test_resume_after_sigkill_skips_what_is_written_and_never_duplicates(project: Path) -> None:
    source = project / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"x": [i, 1]}) + b"\n" for i in range(800)))
    out = project / "out.jsonl"
    args = (
        project / "ladle.toml",
        "slow",
        "--input",
        source,
        "--output",
        out,
        "--batch-size",
        "10",
        "--concurrency",
        "2",
    )
    process = ladle_batch(*args, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or out.read_bytes().count(b"\n") < 200:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    written = out.read_bytes().count(b"\n")
    assert 200 <= written < 800
    with out.open("ab") as f:
        f.write(b'{"line": ' + str(written + 1).encode())  # a torn last line, as a kill mid-write leaves
    refused = ladle_batch(*args)
    assert refused.returncode == 2 and b"--resume" in refused.stderr
    resumed = ladle_batch(*args, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr.decode()
    got = lines(out)
    assert [g["line"] for g in got] == list(range(1, 801))
    assert [g["outputs"]["y"][0] for g in got] == [2.0 * i for i in range(800)]
    scored = Counter((project / "scored.txt").read_text().split())
    assert len(scored) == 800
    # Scored again: at most what was in flight at the kill (two requests of ten records).
    assert sum(1 for count in scored.values() if count > 1) <= 20


def test_csv_parquet_and_npy_inputs(project: Path) -> None:
    with (project / "in.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b"])
        writer.writerows([[1, 2], [3, 4, 5], [5, 6]])
    np.save(project / "in.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    for name in ("in.csv", "in.npy"):
        out = project / f"{name}.out.jsonl"
        done = ladle_batch(project, "double", "--input", project / name, "--output", out, "--quiet")
        assert done.returncode == 0, done.stderr.decode()
        got = lines(out)
        if name == "in.csv":
            assert got[0]["outputs"]["y"] == [2.0, 4.0] and "3 fields" in got[1]["error"]["message"]
            assert got[2]["outputs"]["y"] == [10.0, 12.0]
        else:
            assert [g["outputs"]["y"] for g in got] == (np.arange(8).reshape(4, 2) * 2).tolist()
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["p1", "p2"], "x": [[1.0, 2.0], [3.0, 4.0]]}), project / "in.parquet")
    out = project / "parquet.out.jsonl"
    done = ladle_batch(project, "double", "--input", project / "in.parquet", "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr.decode()
    assert lines(out) == [
        {"line": 1, "id": "p1", "outputs": {"y": [2.0, 4.0]}},
        {"line": 2, "id": "p2", "outputs": {"y": [6.0, 8.0]}},
    ]


def test_refusals(project: Path) -> None:
    source = project / "in.jsonl"
    source.write_text('{"x": [1, 2]}\n')
    unknown = ladle_batch(project, "nope", "--input", source, "--output", project / "o.jsonl")
    assert unknown.returncode == 2 and b"no model 'nope'" in unknown.stderr and b"double" in unknown.stderr
    (project / "in.txt").write_text("x")
    bad_format = ladle_batch(
        project, "double", "--input", project / "in.txt", "--output", project / "o2.jsonl"
    )
    assert bad_format.returncode == 1 and b"unknown format" in bad_format.stderr
    (project / "bad.csv").write_bytes(b"a,b\n1,2\n\xff,3\n")
    broken = ladle_batch(project, "double", "--input", project / "bad.csv", "--output", project / "o3.jsonl")
    assert broken.returncode == 1 and b"line 3: not UTF-8" in broken.stderr


def test_resume_point_truncates_a_torn_line_and_checks_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert resume_point(out) == 0
    out.write_bytes(b'{"line":1,"outputs":{}}\n{"line":2,"outputs":{}}\n{"line":3,"out')
    assert resume_point(out) == 2
    assert out.read_bytes().endswith(b'{"line":2,"outputs":{}}\n')
    out.write_bytes(b'{"line":7,"outputs":{}}\n')
    with pytest.raises(UsageError, match="not the result"):
        resume_point(out)
