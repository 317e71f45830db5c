"""KServe V2 REST against a real server: metadata, health, JSON and binary inference, errors."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from behaviour_runtime import CRASH, INVALID, SLOW

from ladle.testing.server import RunningServer


def v2_body(x: np.ndarray, name: str = "input", **parameters: object) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "ladle" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_carries_the_signature(client: httpx.Client) -> None:
    meta = client.get("/v2/models/bc").json()
    assert meta["platform"] == "xgboost"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert client.get("/v2/models/echo").json()["versions"] == ["1", "2"]
    assert client.get("/v2/models/echo/versions/1").json()["versions"] == ["1"]
    assert client.get("/v2/models/bc/ready").json() == {"name": "bc", "ready": True}


def test_infer_json_matches_the_booster(client: httpx.Client, rows: np.ndarray, repository: Path) -> None:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(repository / "bc" / "1" / "model.ubj"))
    response = client.post("/v2/models/bc/infer", json={**v2_body(rows[:5]), "id": "req-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "bc" and body["model_version"] == "1" and body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "predict" and output["shape"] == [5]
    np.testing.assert_allclose(output["data"], booster.inplace_predict(rows[:5]), rtol=1e-6)


def test_explicit_version_and_latest_by_default(client: httpx.Client) -> None:
    x = np.ones((1, 2), np.float32)
    assert client.post("/v2/models/echo/infer", json=v2_body(x, "x")).json()["model_version"] == "2"
    response = client.post("/v2/models/echo/versions/1/infer", json=v2_body(x, "x"))
    assert response.json()["model_version"] == "1"
    missing = client.post("/v2/models/echo/versions/9/infer", json=v2_body(x, "x"))
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"


def test_tritonclient_binary_and_json(running: RunningServer, rows: np.ndarray) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(running.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("bc")
    results = {}
    for binary in (True, False):
        tensor = triton.InferInput("input", [3, 30], "FP32")
        tensor.set_data_from_numpy(rows[:3], binary_data=binary)
        output = triton.InferRequestedOutput("predict", binary_data=binary)
        result = client.infer("bc", [tensor], outputs=[output])
        assert result.get_response()["model_version"] == "1"
        results[binary] = result.as_numpy("predict")
    np.testing.assert_array_equal(results[True], results[False])
    assert results[True].dtype == np.float32 and results[True].shape == (3,)


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "non-empty list"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP99", "shape": [1, 30], "data": [0]}]}',
            400,
            "datatype",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0]}]}',
            400,
            "elements",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": ["a"]}]}',
            400,
            "FP32",
        ),
        (b'{"inputs": [{"name": "wrong", "datatype": "FP32", "shape": [1, 1], "data": [0]}]}', 422, "names"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0, 1]}]}',
            422,
            "shape",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 30], "data": '
            + b"["
            + b",".join([b"1"] * 30)
            + b"]}]}",
            422,
            "datatype",
        ),
    ],
)
def test_client_mistakes_get_4xx_json(
    client: httpx.Client, content: bytes, status: int, fragment: str
) -> None:
    response = client.post("/v2/models/bc/infer", content=content)
    assert response.status_code == status
    body = response.json()
    assert fragment in body["error"], body


def test_unknown_model_route_and_method(client: httpx.Client) -> None:
    response = client.post("/v2/models/nope/infer", json={})
    assert response.status_code == 404 and response.json()["model"] == "nope"
    assert client.post("/v2/models/../infer", json={}).status_code == 404
    assert client.get("/no/such/route").json()["code"] == "not_found"
    assert client.get("/v2/models/bc/infer").status_code == 405


def test_oversized_body_is_413(client: httpx.Client) -> None:
    response = client.post("/v2/models/bc/infer", content=b" " * (64 * 1024 * 1024 + 1))
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_runtime_errors_map_and_server_stays_healthy(client: httpx.Client) -> None:
    invalid = client.post("/v2/models/echo/infer", json=v2_body(np.array([[INVALID, 0]], np.float32), "x"))
    assert invalid.status_code == 400 and invalid.json()["code"] == "invalid_input"
    crash = client.post("/v2/models/echo/infer", json=v2_body(np.array([[CRASH, 0]], np.float32), "x"))
    assert crash.status_code == 500 and "boom" in crash.json()["error"]
    ok = client.post("/v2/models/echo/infer", json=v2_body(np.array([[1, 2]], np.float32), "x"))
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2, 4]
    assert client.get("/v2/health/ready").status_code == 200


def test_one_bad_request_in_a_batch_fails_alone(client: httpx.Client) -> None:
    slow = np.array([[SLOW, 0]], np.float32)
    values = [np.array([[float(i), 1]], np.float32) for i in range(1, 8)]
    values[3] = np.array([[INVALID, 1]], np.float32)
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        blocker = pool.submit(client.post, "/v2/models/echo/infer", json=v2_body(slow, "x"))
        futures = [pool.submit(client.post, "/v2/models/echo/infer", json=v2_body(v, "x")) for v in values]
        statuses = [f.result().status_code for f in futures]
        assert blocker.result().status_code == 200
    assert statuses == [200, 200, 200, 400, 200, 200, 200]


def test_deadline_from_parameter_and_header_gives_504(client: httpx.Client) -> None:
    slow = v2_body(np.array([[SLOW, 0]], np.float32), "x", timeout_ms=100)
    response = client.post("/v2/models/echo/infer", json=slow)
    assert response.status_code == 504 and response.json()["code"] == "deadline_exceeded"
    header = client.post(  # another version: the first one's slow batch is still running there
        "/v2/models/echo/versions/1/infer",
        json=v2_body(np.array([[SLOW, 0]], np.float32), "x"),
        headers={"Ladle-Timeout-Ms": "100"},
    )
    assert header.status_code == 504
    bad = client.post(
        "/v2/models/echo/infer", json=v2_body(np.ones((1, 2), np.float32), "x", timeout_ms="soon")
    )
    assert bad.status_code == 400 and "timeout_ms" in bad.json()["error"]


def test_bad_priority_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/echo/infer", json=v2_body(np.ones((1, 2), np.float32), "x", priority="urgent")
    )
    assert response.status_code == 400 and "priority" in response.json()["error"]


def test_full_queue_answers_503_with_retry_after_at_once(client: httpx.Client) -> None:
    slow = v2_body(np.array([[SLOW, 0]], np.float32), "x")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(client.post, "/v2/models/tiny_queue/infer", json=slow)
        time.sleep(0.1)  # let the first request reach the instance; the queue holds one more
        others = [pool.submit(client.post, "/v2/models/tiny_queue/infer", json=slow) for _ in range(3)]
        done, _ = concurrent.futures.wait(others, return_when=concurrent.futures.FIRST_COMPLETED)
        first = next(iter(done)).result()
        assert first.status_code == 503 and not running.done()  # refused while the first still runs
        assert first.headers["Retry-After"].isdigit() and first.json()["code"] == "overloaded"
        statuses = sorted(f.result().status_code for f in others)
        assert running.result().status_code == 200
    assert statuses == [200, 503, 503]
