"""Inference logs: rows and their fields, sampling, a full buffer, retention, schema migrations."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from ladle.envelope import TraceContext
from ladle.errors import ConfigError
from ladle.telemetry import InferenceLog, Telemetry
from ladle.telemetry.inference_log import MIGRATIONS, SCHEMA_VERSION

from .feed import requests, run_batch


def test_rows_appear_with_the_right_fields(tmp_path: Path) -> None:
    telemetry = Telemetry(
        {"metrics": False, "logs": {"enabled": True, "path": "logs/inference.db"}}, base_dir=tmp_path
    )
    try:
        trace = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
        batch = [*requests(1, trace=trace), *requests(2)]
        before = time.time()
        run_batch(
            telemetry.observer_for("iris", "2"),
            batch,
            queued=0.25,
            runtime=0.5,
            errors=[None, "invalid_input", None],
        )
        telemetry.observer_for("iris", "2").requests_dropped(requests(1), "overloaded")
        assert telemetry.logs is not None and telemetry.logs.flush()
        rows = telemetry.logs.query(model="iris")
    finally:
        telemetry.close()
    assert (tmp_path / "logs" / "inference.db").is_file()
    assert [row["status"] for row in rows] == ["overloaded", "ok", "invalid_input", "ok"]  # newest first
    first = rows[-1]
    assert first["request_id"] == batch[0].id
    assert (first["model"], first["version"]) == ("iris", "2")
    assert first["latency"] == pytest.approx(0.75)
    assert before - 1 <= first["ts"] <= time.time()
    assert first["trace_id"] == trace.trace_id
    assert rows[-2]["trace_id"] is None
    assert first["inputs"] is None and first["outputs"] is None  # off by default
    with contextlib.closing(sqlite3.connect(tmp_path / "logs" / "inference.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_inputs_and_outputs_are_stored_when_enabled(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path / "log.db", inputs=True, outputs=True)
    try:
        batch = requests(2, inputs={"x": np.array([[1.5, 2.0]], np.float32)})
        log.record_batch(
            "iris",
            "1",
            batch,
            time.monotonic(),
            [None, "runtime_error"],
            [{"y": np.array([1], np.int64)}, None],
        )
        assert log.flush()
        rows = log.query()
    finally:
        log.close()
    assert rows[1]["inputs"] == {"x": [[1.5, 2.0]]} and rows[1]["outputs"] == {"y": [1]}
    assert rows[0]["outputs"] is None


def test_sampling_keeps_the_configured_share(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path / "log.db", sample=0.25)
    try:
        for _ in range(10):
            log.record_batch("iris", "1", requests(10), time.monotonic(), [None] * 10)
        assert log.flush()
        assert len(log.query(limit=1000)) == 25
    finally:
        log.close()


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path / "log.db", buffer=10, flush_interval=60)
    try:
        log.record_batch("iris", "1", requests(25), time.monotonic(), [None] * 25)
        assert log.dropped == 15
        assert log.flush()
        assert log.written == 10 and len(log.query(limit=100)) == 10
    finally:
        log.close()


def test_retention_by_rows_and_by_age(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path / "log.db", max_rows=5, max_age=100)
    try:
        old = requests(3)
        log.record_batch("iris", "1", old, time.monotonic() - 1000, [None] * 3)
        fresh = requests(8)
        log.record_batch("iris", "1", fresh, time.monotonic(), [None] * 8)
        assert log.flush()
        log.enforce_retention()
        kept = [row["request_id"] for row in log.query(limit=100)]
    finally:
        log.close()
    assert kept == [r.id for r in reversed(fresh[-5:])]


def test_older_files_are_migrated_and_newer_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for statement in MIGRATIONS[0]:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO inference_logs (ts, request_id, model, version, latency, status) "
            "VALUES (1.0, 'old', 'iris', '1', 0.1, 'ok')"
        )
        connection.execute("PRAGMA user_version = 1")
        connection.commit()
    log = InferenceLog(path)
    try:
        (row,) = log.query()
    finally:
        log.close()
    assert row["request_id"] == "old" and row["trace_id"] is None and "outputs" in row

    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer"):
        InferenceLog(path)


def test_logs_are_off_by_default() -> None:
    telemetry = Telemetry({"metrics": False})
    try:
        assert telemetry.logs is None
    finally:
        telemetry.close()


def test_written_and_dropped_records_are_exported(tmp_path: Path) -> None:
    telemetry = Telemetry(
        {"logs": {"enabled": True, "buffer": 4, "flush_interval": 60}, "resources": {"enabled": False}},
        base_dir=tmp_path,
    )
    try:
        run_batch(telemetry.observer_for("iris", "1"), requests(10), queued=0.0, runtime=0.001)
        assert telemetry.logs is not None and telemetry.logs.flush()
        text = telemetry.prometheus_text()[0].decode()
    finally:
        telemetry.close()
    assert 'ladle_inference_log_records_total{ladle_log_outcome="written"} 4.0' in text
    assert 'ladle_inference_log_records_total{ladle_log_outcome="dropped"} 6.0' in text
