"""The ladle API: records in, records out, the serving version in a header."""

from __future__ import annotations

import httpx
import numpy as np
import pytest


def test_predict_records(client: httpx.Client, rows: np.ndarray) -> None:
    records = [{"features": row.tolist()} for row in rows[:3]]
    response = client.post("/api/v1/models/bc/predict", json={"inputs": records, "id": "abc"})
    assert response.status_code == 200, response.text
    assert response.headers["Ladle-Model-Version"] == "1"
    body = response.json()
    assert body["id"] == "abc" and body["model"] == "bc" and body["version"] == "1"
    v2 = client.post(
        "/v2/models/bc/infer",
        json={
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [3, 30], "data": rows[:3].ravel().tolist()}
            ]
        },
    ).json()
    assert [o["predict"] for o in body["outputs"]] == pytest.approx(v2["outputs"][0]["data"])


def test_predict_with_version_and_named_inputs(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/models/echo/predict",
        json={"inputs": [{"x": [1, 2]}, {"x": [3, 4]}], "params": {"version": "1"}},
    )
    assert response.status_code == 200
    assert response.headers["Ladle-Model-Version"] == "1"
    assert response.json()["outputs"] == [{"y": [2.0, 4.0]}, {"y": [6.0, 8.0]}]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": []}, 400, "non-empty"),
        ({"inputs": "x"}, 400, "list of records"),
        ({"inputs": [{"features": [1, 2]}], "extra": 1}, 400, "unknown fields"),
        ({"inputs": [{"features": [1.0] * 30}], "params": {"colour": "red"}}, 400, "params"),
        ({"inputs": [{"features": [1.0] * 30}, {"other": [1.0] * 30}]}, 400, "features"),
        ({"inputs": [{"features": [1.0] * 30}, {"features": [1.0] * 29}]}, 400, "one shape"),
        ({"inputs": [{"features": [1.0] * 29}]}, 422, "shape"),
        ({"inputs": [{"features": [1.0] * 30}], "params": {"version": "7"}}, 404, "version"),
    ],
)
def test_predict_mistakes(client: httpx.Client, body: dict[str, object], status: int, fragment: str) -> None:
    response = client.post("/api/v1/models/bc/predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_a_cached_answer_says_where_it_came_from(client: httpx.Client) -> None:
    body = {"inputs": [{"x": [5, 6]}]}
    first = client.post("/api/v1/models/cached/predict", json=body)
    second = client.post("/api/v1/models/cached/predict", json=body)
    assert first.status_code == second.status_code == 200
    assert "Ladle-Served-From" not in first.headers
    assert second.headers["Ladle-Served-From"] == "cache" and second.headers["Ladle-Model-Version"] == "1"
    assert second.json()["outputs"] == first.json()["outputs"] == [{"y": [10.0, 12.0]}]
    v2 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [5, 6]}]}
    assert client.post("/v2/models/cached/infer", json=v2).headers["Ladle-Served-From"] == "cache"
