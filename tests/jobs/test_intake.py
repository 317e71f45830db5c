"""A job's intake: the reader stores its input with the total last, and takes at most
``READ_SHARE`` of the time while the server runs online work (and all of it otherwise)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ladle import Foreground
from ladle.jobs.intake import store_inputs
from ladle.jobs.store import JobStore, StoredChunk

WORK = 0.002  # seconds the reader takes per group


@dataclass
class Clock:
    """Stands in for the shared memory the server writes its ``Foreground`` into."""

    value: float


def _two_groups(gaps: list[float]) -> Iterator[list[StoredChunk]]:
    """Two groups, ``WORK`` seconds each; ``gaps`` gets how long the reader took to come back
    for the second (storing the first, and any pause)."""
    time.sleep(WORK)
    handed = time.monotonic()
    yield [(0, 2, b'[{"x": 1}, {"x": 2}]', {})]
    gaps.append(time.monotonic() - handed)
    time.sleep(WORK)
    yield [(2, 1, b'[{"x": 3}]', {})]


def _read(tmp_path: Path, online_at: float) -> float:
    store = JobStore.open(tmp_path / "jobs.sqlite3")
    job = store.create_job(
        kind="predict", model="m", version=None, params={}, source="file", chunk_size=2, input_name="in.jsonl"
    )
    assert job.total is None
    gaps: list[float] = []
    assert list(store_inputs(str(store.path), job.id, _two_groups, (gaps,), Clock(online_at))) == [3]
    stored = store.job(job.id)
    assert stored is not None and stored.total == 3
    assert store.input_chunk(job.id, 2) == ([{"x": 3}], {})
    store.close()
    return gaps[0]


def test_the_reader_runs_at_full_speed_while_the_server_serves_nothing(tmp_path: Path) -> None:
    assert _read(tmp_path, -math.inf) < 0.2


def test_the_reader_pauses_while_online_work_runs_and_resumes_when_it_stops(tmp_path: Path) -> None:
    # Online work until 0.5 s from now (recent for a window more): after a group that took at least
    # WORK seconds the reader would wait WORK * (1 / READ_SHARE - 1), about 2 s or more, but resumes
    # once the online work is no longer recent.
    online_until = time.monotonic() + 0.5
    assert 0.5 + Foreground.window - 0.05 <= _read(tmp_path, online_until) < 1.5
