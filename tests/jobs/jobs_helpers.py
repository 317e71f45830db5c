"""Helpers of the job tests: a repository served by the doubling runtime, polling a job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent


def write_repository(root: Path, models: dict[str, str]) -> Path:
    """``REPO/<name>/1`` served by the doubling runtime, each with its extra ``model.toml`` lines."""
    repo = root / "models"
    for name, extra in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "model.toml").write_text(f'runtime = "doubling"\n{extra}')
    return repo


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 60.0, path: str = "/api/v1/jobs") -> Any:
    """Poll until the job finished; returns its last state."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"{path}/{job_id}").json()
        if state["status"] in ("succeeded", "failed", "cancelled", "completed", "expired"):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {state}")
        time.sleep(0.05)


def silent(seconds: float) -> Iterator[int]:
    """A reader process's generator that works for ``seconds`` before its one item (as a job's
    input reader does: it sends nothing until all is stored)."""
    time.sleep(seconds)
    yield 0
