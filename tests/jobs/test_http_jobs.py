"""Jobs over HTTP against a real server: create, poll, results in input order, malformed records,
server-side input files, cancellation, 404s, the token, callbacks, limits and retention."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from jobs_helpers import wait_for_job, write_repository

from ladle import PluginHost
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

TOKEN = "jobs-secret"


class _Callbacks(BaseHTTPRequestHandler):
    received: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(orjson.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def callbacks() -> Iterator[tuple[str, list[Any]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callbacks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", _Callbacks.received
    server.shutdown()


def host() -> PluginHost:
    plugins = PluginHost()
    plugins.add_module("jobs_runtime")
    return plugins.discover()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "good.jsonl").write_text("".join(f'{{"x": [{i}, 1]}}\n' for i in range(50)))
    (folder / "mixed.jsonl").write_text('{"x": [1, 2]}\nnot json\n{"x": [3]}\n{"id": "last", "x": [4, 5]}\n')
    with (folder / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "a", "b"])
        writer.writerows([["r1", 1, 2], ["r2", 3], ["r3", 5, 6]])
    np.save(folder / "rows.npy", np.arange(20, dtype=np.float32).reshape(10, 2))
    (folder / "bad.csv").write_bytes(b"a,b\n1,2\n\xff\xfe,3\n")
    return folder


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, inputs: Path, callbacks: tuple[str, list[Any]]
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("jobs")
    repo = write_repository(root, {"double": "", "slow": "options = { delay = 0.05 }\n"})
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(repo), "api_token": TOKEN},
            "jobs": {
                "store": str(root / "jobs.sqlite3"),
                "batch_rows": 4,
                "max_records": 200,
                "input_dirs": [str(inputs)],
                "callback_hosts": [callbacks[0]],
                "retention": 3600,
            },
        }
    )
    with run_server(Server(config, host())) as running:
        yield running


@pytest.fixture
def client(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def results(client: httpx.Client, job_id: str, **params: str) -> Any:
    response = client.get(f"/api/v1/jobs/{job_id}/results", params=params)
    assert response.status_code == 200, response.text
    return response


def test_a_job_answers_202_then_gives_results_in_input_order(client: httpx.Client) -> None:
    records = [{"x": [i, -i]} for i in range(37)]
    created = client.post("/api/v1/models/double/jobs", json={"inputs": records})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] == "queued" and created.headers["location"] == f"/api/v1/jobs/{job['id']}"
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"total": 37, "done": 37, "failed": 0, "fraction": 1.0}
    body = results(client, job["id"]).json()
    assert body["status"] == "succeeded"
    assert [r["index"] for r in body["results"]] == list(range(37))
    assert [r["outputs"]["y"] for r in body["results"]] == [[2 * i, -2 * i] for i in range(37)]
    lines = results(client, job["id"], format="jsonl")
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    assert [orjson.loads(line) for line in lines.text.splitlines()] == body["results"]


def test_malformed_records_fail_alone(client: httpx.Client) -> None:
    records: list[Any] = [
        {"x": [1, 2]},
        7,
        {"x": [1, 2, 3]},
        {"x": [-1, 0]},
        {"id": "k", "x": [5, 6]},
        {"z": 1},
    ]
    job = client.post("/api/v1/models/double/jobs", json={"inputs": records}).json()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded" and done["progress"]["failed"] == 4
    got = results(client, job["id"]).json()["results"]
    assert got[0] == {"index": 0, "outputs": {"y": [2.0, 4.0]}}
    assert got[1]["error"]["code"] == "invalid_request" and "object" in got[1]["error"]["message"]
    assert got[2]["error"]["status"] in (400, 422)
    assert got[3]["error"]["code"] == "invalid_input"  # the runtime refused that row only
    assert got[4] == {"index": 4, "id": "k", "outputs": {"y": [10.0, 12.0]}}
    assert got[5]["error"]["status"] in (400, 422)


def test_server_side_input_files_in_every_format(client: httpx.Client) -> None:
    def run(name: str) -> list[Any]:
        job = client.post("/api/v1/models/double/jobs", json={"input_file": name})
        assert job.status_code == 202, job.text
        assert wait_for_job(client, job.json()["id"])["status"] == "succeeded"
        return list(results(client, job.json()["id"]).json()["results"])

    good = run("good.jsonl")
    assert [r["line"] for r in good] == list(range(1, 51))
    assert good[49]["outputs"]["y"] == [98.0, 2.0]
    mixed = run("mixed.jsonl")
    assert mixed[0]["outputs"]["y"] == [2.0, 4.0]
    assert mixed[1]["error"]["message"].startswith("line 2: not valid JSON")
    assert "error" in mixed[2] and mixed[3] == {"line": 4, "id": "last", "outputs": {"y": [8.0, 10.0]}}
    table = run("table.csv")
    assert table[0] == {"line": 1, "id": "r1", "outputs": {"y": [2.0, 4.0]}}
    assert "2 fields where the header has 3" in table[1]["error"]["message"]
    assert table[2]["outputs"]["y"] == [10.0, 12.0]
    rows = run("rows.npy")
    assert [r["outputs"]["y"] for r in rows] == (np.arange(20).reshape(10, 2) * 2).tolist()


def test_a_whole_file_error_fails_the_job_naming_the_line(client: httpx.Client) -> None:
    job = client.post("/api/v1/models/double/jobs", json={"input_file": "bad.csv"}).json()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_input_file" and "line 3" in done["error"]["message"]
    assert "bad.csv" in done["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input_file": "../jobs.sqlite3"}, 400, "format"),
        ({"input_file": "missing.jsonl"}, 400, "allowed input folder"),
        ({"input_file": "../../etc/passwd.jsonl"}, 400, "allowed input folder"),
        ({"inputs": []}, 400, "non-empty"),
        ({"inputs": [{"x": [1, 2]}], "input_file": "good.jsonl"}, 400, "either"),
        ({"inputs": [{"x": [1, 2]}], "params": {"priority": "high"}}, 400, "low priority"),
        ({"inputs": [{"x": [1, 2]}], "colour": 1}, 400, "unknown fields"),
        ({"inputs": [{"x": [1, 2]}], "callback_url": "http://example.com/hook"}, 400, "not allowed"),
        ({"inputs": [{"x": [1, 2]}] * 201}, 413, "max_records"),
    ],
)
def test_bad_job_requests_are_4xx_naming_the_problem(
    client: httpx.Client, inputs: Path, body: dict[str, Any], status: int, words: str
) -> None:
    response = client.post("/api/v1/models/double/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error and str(inputs.parent) not in error  # never a server path


def test_unknown_ids_and_models_are_404(client: httpx.Client) -> None:
    assert client.get("/api/v1/jobs/job-nope").status_code == 404
    assert client.get("/api/v1/jobs/job-nope/results").status_code == 404
    assert client.delete("/api/v1/jobs/job-nope").status_code == 404
    missing = client.post("/api/v1/models/nope/jobs", json={"inputs": [{"x": [1, 2]}]})
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"


def test_the_token_protects_jobs(served: RunningServer) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as anonymous:
        refused = anonymous.post("/api/v1/models/double/jobs", json={"inputs": [{"x": [1, 2]}]})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/api/v1/jobs").status_code == 401
        wrong = anonymous.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_cancel_stops_a_job_and_keeps_what_was_scored(client: httpx.Client) -> None:
    job = client.post("/api/v1/models/slow/jobs", json={"inputs": [{"x": [i, 1]} for i in range(200)]}).json()
    early = client.get(f"/api/v1/jobs/{job['id']}/results")
    assert early.status_code == 409 and early.json()["status"] in ("queued", "running")
    time.sleep(0.3)
    cancelled = client.delete(f"/api/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    time.sleep(0.3)
    state = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert state["status"] == "cancelled" and 0 < state["progress"]["done"] < 200
    got = results(client, job["id"]).json()["results"]
    assert len(got) == state["progress"]["done"]
    assert [r["index"] for r in got] == sorted({r["index"] for r in got})
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 200  # cancelling again is harmless
    listed = client.get("/api/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert job["id"] in [j["id"] for j in listed]


def test_a_finished_job_calls_back(client: httpx.Client, callbacks: tuple[str, list[Any]]) -> None:
    url = f"http://{callbacks[0]}/done"
    job = client.post(
        "/api/v1/models/double/jobs", json={"inputs": [{"x": [1, 2]}], "callback_url": url}
    ).json()
    wait_for_job(client, job["id"])
    deadline = time.monotonic() + 10
    while not any(c["id"] == job["id"] for c in callbacks[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = [c for c in callbacks[1] if c["id"] == job["id"]]
    assert sent and sent[0]["status"] == "succeeded" and sent[0]["progress"]["done"] == 1
    deadline = time.monotonic() + 5
    while client.get(f"/api/v1/jobs/{job['id']}").json()["callback"]["state"] != "sent":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_jobs_are_off_without_a_store(tmp_path: Path) -> None:
    repo = write_repository(tmp_path, {"double": ""})
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}})
    with run_server(Server(config, host())) as running, httpx.Client(base_url=running.url) as client:
        response = client.post("/api/v1/models/double/jobs", json={"inputs": [{"x": [1, 2]}]})
        assert response.status_code == 404 and response.json()["code"] == "jobs_disabled"
        assert "[jobs] store" in response.json()["error"]
        assert client.get("/v1/batches").json()["error"]["code"] == "jobs_disabled"
