"""Every 4xx message carries what the client needs in the ``error`` string itself (clients such as
tritonclient show nothing else), and every answer is counted by model, version, protocol and status:
refusals before queueing, unknown models, 499 and 504 included."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server


@pytest.fixture
def running(repository: Path) -> Iterator[RunningServer]:
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config)) as running:
        yield running


def responses(client: httpx.Client) -> dict[tuple[str, str, str, str], float]:
    """``ladle_responses_total`` by (model, version, protocol, status)."""
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ladle_responses_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (
                labels["ladle_model_name"],
                labels["ladle_model_version"],
                labels["ladle_protocol"],
                labels["http_response_status_code"],
            )
            counts[key] = float(line.rsplit(" ", 1)[1])
    return counts


def test_tritonclient_shows_the_expected_inputs_in_its_one_message(running: RunningServer) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(running.url.removeprefix("http://"))
    wrong = triton.InferInput("features", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 4)))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [wrong])
    text = str(caught.value)
    assert "the model takes 'input' (FP64 [-1, 4])" in text and "unexpected ['features']" in text
    narrow = triton.InferInput("input", [1, 3], "FP64")
    narrow.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3\], expected \[-1, 4\]"):
        client.infer("iris", [narrow])
    with pytest.raises(InferenceServerException, match="model 'iriss' is not served; served: iris, slow"):
        client.infer("iriss", [narrow])
    with pytest.raises(InferenceServerException, match="has no version '7'; loaded: 2"):
        client.infer("iris", [narrow], model_version="7")


def test_rest_messages_name_what_was_expected(running: RunningServer) -> None:
    with httpx.Client(base_url=running.url) as client:
        odd = {"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
        error = client.post("/v2/models/iris/infer", json=odd).json()["error"]
        assert "unknown datatype 'FLOAT'; known: BOOL" in error and "FP32" in error
        records = client.post("/api/v1/models/iris/predict", json={"inputs": [{"a": 1, "b": 2}]})
        assert records.status_code == 400
        assert (
            records.json()["error"]
            == "record keys ['a', 'b'] do not match the model's inputs: expected ['input']"
        )
        extra = client.post("/api/v1/models/iris/predict", json={"inputs": [], "extras": 1}).json()["error"]
        assert extra == "unknown fields ['extras']; allowed: id, inputs, params"
        config = client.get("/v2/models/iris/config").json()
        assert config["platform"] == "sklearn"  # the runtime serving the latest version, not ""


def test_every_answer_is_counted_by_status_protocol_and_version(running: RunningServer) -> None:
    good = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    wrong = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    with httpx.Client(base_url=running.url, timeout=30) as client:
        before = responses(client)
        for _ in range(5):
            assert client.post("/v2/models/iris/infer", json=good).status_code == 200
            assert client.post("/v2/models/iris/infer", json=wrong).status_code == 422
            assert client.post("/v2/models/nope/infer", json=good).status_code == 404
            assert client.post("/v2/models/iris/infer", content=b"{").status_code == 400
            assert client.post("/api/v1/models/nope/predict", json={"inputs": [{"a": 1}]}).status_code == 404
            assert (
                client.post("/api/v1/models/iris/predict", json={"inputs": [{"a": 1, "b": 2}]}).status_code
                == 400
            )
        after = responses(client)
        stats = client.get("/api/v1/stats", params={"window": 60}).json()
    gained = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert gained == {
        ("iris", "2", "v2", "200"): 5,
        ("iris", "2", "v2", "422"): 5,  # refused by the signature check, before queueing
        ("", "", "v2", "404"): 5,  # an unknown model: no name (clients cannot make series), no version
        ("iris", "", "v2", "400"): 5,  # a body that does not decode: no version was reached
        ("", "", "ladle", "404"): 5,
        ("iris", "", "ladle", "400"): 5,
    }
    (iris,) = [v for v in stats["versions"] if (v["model"], v["version"]) == ("iris", "2")]
    assert iris["responses_by_status"] == {"200": 5, "422": 5}


def test_timeouts_and_abandoned_requests_are_counted(running: RunningServer) -> None:
    def slow(seconds: float) -> dict[str, object]:
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [seconds, 0]}]}

    with httpx.Client(base_url=running.url, timeout=30) as client:
        before = responses(client)
        busy = threading.Thread(target=lambda: client.post("/v2/models/slow/infer", json=slow(1.5)))
        busy.start()
        time.sleep(0.2)  # the one instance is now busy for 1.5 s
        late = client.post("/v2/models/slow/infer", json=slow(0.0), headers={"Ladle-Timeout-Ms": "100"})
        assert late.status_code == 504
        with pytest.raises(httpx.TimeoutException):  # queued behind the busy batch, then abandoned
            httpx.post(f"{running.url}/v2/models/slow/infer", json=slow(0.0), timeout=0.3)
        busy.join()
        deadline = time.monotonic() + 10
        while True:
            after = responses(client)
            gained = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            if ("slow", "1", "v2", "499") in gained or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        stats = client.get("/api/v1/stats", params={"window": 60}).json()
    assert gained[("slow", "1", "v2", "504")] == 1
    assert gained[("slow", "1", "v2", "499")] == 1
    assert gained[("slow", "1", "v2", "200")] == 1
    (entry,) = [v for v in stats["versions"] if v["model"] == "slow"]
    assert entry["responses_by_status"] == {"200": 1, "499": 1, "504": 1}
