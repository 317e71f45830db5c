"""Error bodies name the model, version, input and parameter, never a server path or a process id;
the server log keeps the full detail."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import psutil
import pytest
from hardening_runtime import EXIT, FAIL
from hardening_support import serve, write_repository

from ladle.errors import ConfigError, InstanceFailedError, InvalidRequestError, public_text


def test_to_dict_cuts_paths_and_leaves_out_private_details() -> None:
    error = ConfigError(
        "/srv/ladle/models/scorer/1: no runtime recognises these files; set runtime in "
        "/srv/ladle/models/scorer/model.toml",
        file="/srv/ladle/models/scorer/1",
        key="runtime",
        problems=[{"file": "/srv/x", "detail": "open '/srv/ladle/a.onnx' failed"}],
    )
    body = error.to_dict()
    assert "/srv" not in str(body)
    assert body["error"].startswith("…/1: no runtime") and "…/model.toml" in body["error"]
    assert body["key"] == "runtime" and body["problems"] == [{"detail": "open '…/a.onnx' failed"}]
    detail = error.log_detail()
    assert "/srv/ladle/models/scorer/1" in detail and "key: runtime" in detail
    failed = InstanceFailedError("worker died", model="m", version="1", pid=4242, traceback="File /srv/a.py")
    expected = {"error": "worker died", "code": "instance_failed", "model": "m", "version": "1"}
    assert failed.to_dict() == expected
    assert "4242" in failed.log_detail()


@pytest.mark.parametrize(
    "text",
    [
        "see http://example.com/a/b and 10 requests/s over a/b",
        "POST /api/v1/deployments and GET /v2/health/ready, /v1/completions",
        "input 'x': shape [1, 2] needs 2 elements",
    ],
)
def test_text_without_server_paths_is_left_alone(text: str) -> None:
    assert public_text(text) == text
    assert InvalidRequestError(text, input="x").to_dict()["error"] == text


def test_a_runtime_error_naming_its_artifact_is_500_without_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = write_repository(tmp_path)
    with serve(repo) as running, caplog.at_level(logging.ERROR):
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [FAIL, 0.0]}]}
        response = httpx.post(f"{running.url}/v2/models/doubler/infer", json=body)
        assert response.status_code == 500
        assert str(tmp_path) not in response.text and "weights.bin" in response.text
        error = response.json()
        assert error["model"] == "doubler" and error["version"] == "1" and error["code"] == "runtime_error"
        assert error["error"] == "runtime 'doubling' failed: OSError: cannot read …/weights.bin"
        assert str(tmp_path) in caplog.text  # the operator still sees where


def test_a_dead_worker_process_is_reported_without_its_process_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = write_repository(tmp_path, 'executor = "process"\n')
    with serve(repo) as running, caplog.at_level(logging.ERROR):
        workers = [p.pid for p in psutil.Process().children(recursive=True)]
        assert workers, "the model runs in a worker process"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [EXIT, 0.0]}]}
        response = httpx.post(f"{running.url}/v2/models/doubler/infer", json=body, timeout=60)
        assert response.status_code >= 500
        text = response.text
        assert not any(re.search(rf"\b{pid}\b", text) for pid in workers), text
        assert "'doubler'" in text
        assert any(str(pid) in caplog.text for pid in workers)  # the log has it
