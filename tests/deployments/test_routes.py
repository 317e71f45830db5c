"""The control API over HTTP: bearer tokens, per-token rate limits, validation errors as 4xx JSON,
static mode read-only; and the data-plane token middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ladle import ConfigError
from ladle.config import ServerConfig
from ladle.deployments.auth import BearerAuth, RateLimiter, TokenBucket, TokenMiddleware, protect_data_plane
from ladle.deployments.controller import DeploymentController
from ladle.deployments.routes import control_routes
from ladle.serving import ModelManager

from .harness import make_config, make_host, write_version

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def control_app(config: ServerConfig, **limits: Any) -> Starlette:
    manager = ModelManager(config, make_host())
    controller = DeploymentController(manager)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await controller.start()
        yield
        await controller.close()
        await manager.close(5.0)

    app = Starlette(routes=control_routes(controller, config, **limits), lifespan=lifespan)
    app.state.controller = controller
    return app


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    return repo


@contextlib.contextmanager
def client_for(config: ServerConfig, **limits: Any) -> Iterator[TestClient]:
    with TestClient(control_app(config, **limits)) as client:
        yield client


def test_a_deployment_round_trip(repo: Path, tmp_path: Path) -> None:
    with client_for(make_config(repo, tmp_path / "d.db", api_token=TOKEN)) as client:
        write_version(repo, "fraud", "v2")
        response = client.post(
            "/api/v1/deployments", json={"model": "fraud", "version": "v2", "traffic": 25}, headers=AUTH
        )
        assert response.status_code == 201, response.text
        assert response.json()["traffic"] == {"v1": 75.0, "v2": 25.0}
        response = client.put("/api/v1/deployments/fraud/traffic", json={"v1": 50, "v2": 50}, headers=AUTH)
        assert response.status_code == 200 and response.json()["traffic"] == {"v1": 50.0, "v2": 50.0}
        everything = client.get("/api/v1/deployments", headers=AUTH).json()
        assert everything["mode"] == "managed"
        assert [m["name"] for m in everything["models"]] == ["fraud"]
        one = client.get("/api/v1/deployments/fraud?limit=2", headers=AUTH).json()
        assert len(one["history"]["splits"]) == 2 and one["history"]["splits"][0]["traffic"] == {
            "v1": 50,
            "v2": 50,
        }
        response = client.post("/api/v1/deployments/fraud/rollback", headers=AUTH)
        assert response.status_code == 200 and response.json()["traffic"] == {"v1": 100.0}
        response = client.delete("/api/v1/deployments/fraud/versions/v2", headers=AUTH)
        assert response.status_code == 200
        feedback = client.post("/api/v1/models/fraud/feedback", json={"request_id": "x", "label": 1})
        assert feedback.status_code == 202 and feedback.json()["recorded"] is False


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("put", "/api/v1/deployments/fraud/traffic", {"v1": 50, "v9": 50}, 400, "unknown version 'v9'"),
        ("put", "/api/v1/deployments/fraud/traffic", {"v1": 60}, 400, "sum to 100"),
        ("put", "/api/v1/deployments/fraud/traffic", [1, 2], 400, "JSON object"),
        ("put", "/api/v1/deployments/nope/traffic", {"v1": 100}, 404, "not served"),
        ("post", "/api/v1/deployments", {"model": "fraud"}, 400, "version"),
        ("post", "/api/v1/deployments", {"model": "fraud", "version": "v1", "traffic": 120}, 400, "traffic"),
        ("post", "/api/v1/deployments", {"model": "fraud", "version": "v1", "colour": 1}, 400, "colour"),
        ("post", "/api/v1/deployments", {"model": "fraud", "version": "v7"}, 404, "not in the repository"),
        ("post", "/api/v1/deployments", {"model": "fraud", "version": "v1", "options": {"x": 1}}, 400, "x"),
        (
            "post",
            "/api/v1/deployments",
            {"model": "fraud", "version": "v1", "options": {"rollout": {"steps": [5]}}},
            400,
            "end at 100",
        ),
        ("post", "/api/v1/deployments/fraud/rollback", {}, 409, "no earlier version"),
        ("get", "/api/v1/deployments/nope", None, 404, "not deployed"),
        ("get", "/api/v1/deployments/fraud?limit=0", None, 400, "limit"),
    ],
)
def test_client_mistakes_get_4xx_json_naming_the_problem(
    repo: Path, tmp_path: Path, method: str, path: str, body: Any, status: int, words: str
) -> None:
    with client_for(make_config(repo, tmp_path / "d.db", api_token=TOKEN)) as client:
        kwargs: dict[str, Any] = {"headers": AUTH}
        if body is not None:
            kwargs["json"] = body
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert words in response.json()["error"]


def test_a_malformed_body_is_a_400(repo: Path, tmp_path: Path) -> None:
    with client_for(make_config(repo, tmp_path / "d.db", api_token=TOKEN)) as client:
        response = client.put("/api/v1/deployments/fraud/traffic", content=b"{not json", headers=AUTH)
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_requests_without_the_token_get_401(repo: Path, tmp_path: Path) -> None:
    with client_for(make_config(repo, tmp_path / "d.db", api_token=TOKEN)) as client:
        assert client.get("/api/v1/deployments").status_code == 401
        assert client.get("/api/v1/placement").status_code == 401
        placed = client.get("/api/v1/placement", headers=AUTH)
        assert placed.status_code == 200 and placed.json() == {"fixed": {}}  # in-process instances
        wrong = client.get("/api/v1/deployments", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
        assert wrong.headers["www-authenticate"] == "Bearer"
        basic = client.put(
            "/api/v1/deployments/fraud/traffic", json={"v1": 100}, headers={"Authorization": "Basic x"}
        )
        assert basic.status_code == 401
        # feedback is data plane: open unless data_plane_token is set
        assert (
            client.post("/api/v1/models/fraud/feedback", json={"request_id": "x", "label": 1}).status_code
            == 202
        )


def test_the_token_may_come_from_the_environment(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADLE_API_TOKEN", "from-env")
    with client_for(make_config(repo, tmp_path / "d.db")) as client:
        assert (
            client.get("/api/v1/deployments", headers={"Authorization": "Bearer from-env"}).status_code == 200
        )
        assert client.get("/api/v1/deployments").status_code == 401


def test_without_a_configured_token_reads_are_open_and_changes_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LADLE_API_TOKEN", raising=False)
    with client_for(make_config(repo, tmp_path / "d.db")) as client:
        assert client.get("/api/v1/deployments").status_code == 200
        assert client.get("/api/v1/placement").status_code == 200
        refused = client.put("/api/v1/deployments/fraud/traffic", json={"v1": 100})
        assert refused.status_code == 401 and "no API token is configured" in refused.json()["error"]


def test_static_mode_is_read_only(repo: Path, tmp_path: Path) -> None:
    with client_for(make_config(repo, api_token=TOKEN)) as client:
        state = client.get("/api/v1/deployments/fraud", headers=AUTH).json()
        assert state["mode"] == "static" and state["traffic"] == {"v1": 100.0}
        refused = client.put("/api/v1/deployments/fraud/traffic", json={"v1": 100}, headers=AUTH)
        assert refused.status_code == 409 and "static mode" in refused.json()["error"]


def test_each_token_is_rate_limited_with_retry_after(repo: Path, tmp_path: Path) -> None:
    with client_for(make_config(repo, tmp_path / "d.db", api_token=TOKEN), rate=0.5, burst=3) as client:
        statuses = [client.get("/api/v1/deployments", headers=AUTH).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.get("/api/v1/deployments", headers=AUTH)
        assert limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 2


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    start = bucket._updated
    assert bucket.take(start) == 0 and bucket.take(start) == 0
    assert bucket.take(start) == pytest.approx(0.5)
    assert bucket.take(start + 0.5) == 0.0
    limiter = RateLimiter(1.0, 1.0)
    limiter.check("a")
    limiter.check("b")  # buckets are per key


def test_the_middleware_guards_the_data_plane_but_not_health() -> None:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[Route("/v2/health/live", ok), Route("/api/v1/models/m/predict", ok, methods=["POST"])]
    )
    app = TokenMiddleware(inner, BearerAuth([TOKEN], rate=1000, burst=1000))
    with TestClient(app) as client:  # type: ignore[arg-type]
        assert client.get("/v2/health/live").status_code == 200
        refused = client.post("/api/v1/models/m/predict")
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert client.post("/api/v1/models/m/predict", headers=AUTH).text == "ok"


def test_feedback_needs_the_token_when_the_data_plane_does(repo: Path, tmp_path: Path) -> None:
    config = make_config(repo, tmp_path / "d.db", api_token=TOKEN, data_plane_token=True)
    with client_for(config) as client:
        body = {"request_id": "x", "label": 1}
        assert client.post("/api/v1/models/fraud/feedback", json=body).status_code == 401
        assert client.post("/api/v1/models/fraud/feedback", json=body, headers=AUTH).status_code == 202


def test_protect_data_plane_follows_the_config(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LADLE_API_TOKEN", raising=False)
    inner = Starlette()
    assert protect_data_plane(inner, make_config(repo, api_token=TOKEN)) is inner
    wrapped = protect_data_plane(inner, make_config(repo, api_token=TOKEN, data_plane_token=True))
    assert isinstance(wrapped, TokenMiddleware) and wrapped.auth.limiter is None  # no data-plane rate limit
    with pytest.raises(ConfigError, match="needs a token"):
        protect_data_plane(inner, make_config(repo, data_plane_token=True))
