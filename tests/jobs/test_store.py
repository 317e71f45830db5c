"""The job store: migrations and refusals at open, idempotent chunk results, retention, and a real
server killed with SIGKILL mid-job (scoring, or still reading its input) that resumes with no record
lost and none answered twice."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from jobs_helpers import HERE, wait_for_job, write_repository

from ladle.errors import ConfigError
from ladle.jobs.store import SCHEMA_VERSION, JobStore


def test_open_creates_and_migrates_and_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.sqlite3"
    store = JobStore.open(path)
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "job_inputs", "job_results", "files", "meta"} <= tables
    JobStore.open(path).close()  # reopening migrates nothing and keeps working
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer ladle"):
        JobStore.open(path)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"unusable|not a ladle"):
        JobStore.open(garbage)
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE other (x)")
    with pytest.raises(ConfigError, match="not a ladle job store"):
        JobStore.open(foreign)


def test_chunk_results_are_written_once_and_expire(tmp_path: Path) -> None:
    store = JobStore.open(tmp_path / "jobs.sqlite3")
    job = store.create_job(
        kind="predict",
        model="m",
        version=None,
        params={},
        source="inline",
        chunk_size=2,
        records=[{"x": 1}] * 3,
    )
    assert job.total == 3 and store.input_chunk(job.id, 2) == ([{"x": 1}], {})
    assert store.save_result(job.id, 0, 2, 1, b'{"index":0}\n{"index":1}\n')
    assert not store.save_result(job.id, 0, 2, 0, b"again\n")  # the same chunk: ignored
    assert store.save_result(job.id, 2, 1, 0, b'{"index":2}\n')
    state = store.job(job.id)
    assert state is not None and (state.done, state.failed) == (3, 1)
    assert b"".join(store.results(job.id)) == b'{"index":0}\n{"index":1}\n{"index":2}\n'
    finished = store.finish(job.id, "succeeded", retention=10.0)
    assert finished is not None and finished.status == "succeeded"
    assert store.input_chunk(job.id, 0) == ([], {})  # inputs go once a job finished
    assert store.finish(job.id, "cancelled", retention=10.0).status == "succeeded"  # type: ignore[union-attr]
    assert store.delete_expired(time.time()) == 0
    store.delete_expired(time.time() + 11)
    assert store.job(job.id) is None and list(store.results(job.id)) == []
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", "serve", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_live(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def test_a_server_killed_mid_job_resumes_with_no_record_lost_or_scored_twice(tmp_path: Path) -> None:
    log = tmp_path / "scored.txt"
    write_repository(tmp_path, {"slow": f'options = {{ delay = 0.02, log = "{log}" }}\n'})
    config = tmp_path / "ladle.toml"
    config.write_text(
        '[server]\nrepository = "models"\n[plugins]\nmodules = ["jobs_runtime"]\n'
        '[jobs]\nstore = "jobs.sqlite3"\nbatch_rows = 10\nconcurrency = 2\n'
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    records = [{"x": [i, 1]} for i in range(1000)]
    first = start_server(config, port)
    try:
        wait_live(url, first)
        with httpx.Client(base_url=url, timeout=10) as client:
            job = client.post("/api/v1/models/slow/jobs", json={"inputs": records}).json()
            while client.get(f"/api/v1/jobs/{job['id']}").json()["progress"]["done"] < 200:
                time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    before = Counter(log.read_text().split())
    assert 200 <= len(before) < 1000  # killed mid-job
    second = start_server(config, port)
    try:
        wait_live(url, second)
        with httpx.Client(base_url=url, timeout=30) as client:
            done = wait_for_job(client, job["id"], timeout=120)
            assert done["status"] == "succeeded"
            assert done["progress"] == {"total": 1000, "done": 1000, "failed": 0, "fraction": 1.0}
            results = client.get(f"/api/v1/jobs/{job['id']}/results").json()["results"]
    finally:
        second.terminate()
        second.wait(30)
    assert [r["index"] for r in results] == list(range(1000))  # none lost, none twice
    assert [r["outputs"]["y"][0] for r in results] == [2.0 * i for i in range(1000)]
    scored = Counter(log.read_text().split())
    assert len(scored) == 1000
    twice = [value for value, count in scored.items() if count > 1]
    # Only what was in flight at the kill (two requests of ten records) is scored again.
    assert len(twice) <= 20, twice


def test_a_server_killed_while_a_job_reads_its_input_reads_it_again_with_every_record_once(
    tmp_path: Path,
) -> None:
    write_repository(tmp_path, {"fast": 'batcher = { name = "dynamic", max_batch_size = 1000 }\n'})
    count = 300_000
    (tmp_path / "in.jsonl").write_text("".join(f'{{"x": [{i}, 1]}}\n' for i in range(count)))
    config = tmp_path / "ladle.toml"
    config.write_text(
        '[server]\nrepository = "models"\n[plugins]\nmodules = ["jobs_runtime"]\n'
        '[jobs]\nstore = "jobs.sqlite3"\nbatch_rows = 1000\ninput_dirs = ["."]\n'
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_server(config, port)
    try:
        wait_live(url, first)
        with httpx.Client(base_url=url, timeout=10) as client:
            job = client.post("/api/v1/models/fast/jobs", json={"input_file": "in.jsonl"}).json()
        deadline = time.monotonic() + 60
        job_id = (job["id"],)
        with sqlite3.connect(f"file:{tmp_path / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
            while time.monotonic() < deadline:  # some records stored, the total not yet
                stored = db.execute("SELECT count(*) FROM job_inputs WHERE job_id = ?", job_id).fetchone()
                total = db.execute("SELECT total FROM jobs WHERE id = ?", job_id).fetchone()
                if stored[0] > 0 and total[0] is None:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the job was never caught reading its input")
        readers = psutil.Process(first.pid).children(recursive=True)
        assert readers, "the input is read by a process of its own"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    _, alive = psutil.wait_procs(readers, timeout=10)
    assert not alive, "a reader outlived the server killed with SIGKILL"
    second = start_server(config, port)
    try:
        wait_live(url, second)
        with httpx.Client(base_url=url, timeout=30) as client:
            done = wait_for_job(client, job["id"], timeout=240)
    finally:
        second.terminate()
        second.wait(30)
    assert done["status"] == "succeeded"
    assert done["progress"] == {"total": count, "done": count, "failed": 0, "fraction": 1.0}
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        starts = [row[0] for row in db.execute("SELECT start FROM job_results WHERE job_id = ?", job_id)]
    assert sorted(starts) == list(range(0, count, 1000))  # every chunk scored once


def _open_when_released(path: str, barrier: Any) -> str:
    barrier.wait()
    try:
        JobStore.open(Path(path)).close()
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_processes_opening_one_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    # As several fronts (``--workers``) or a job's input reader and its server do.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(8, mp_context=context) as pool:
        for attempt in range(3):
            barrier = manager.Barrier(8)
            path = str(tmp_path / f"jobs-{attempt}.sqlite3")
            opened = list(pool.map(_open_when_released, [path] * 8, [barrier] * 8))
            assert opened == ["ok"] * 8, opened
