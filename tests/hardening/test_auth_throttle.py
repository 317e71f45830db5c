"""Authentication under attack: wrong tokens are throttled per client address, tokens are compared
in constant time and never logged, and an open data plane in managed mode is said at start (that
``ladle serve`` prints it is checked in test_rollout_resume, which runs one in managed mode)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hardening_support import BODY, serve, write_repository

from ladle.config import ServerConfig
from ladle.deployments import auth
from ladle.deployments.auth import BearerAuth, FailedTokenThrottle, startup_warnings
from ladle.testing.server import RunningServer

TOKEN = "s3cret-Token-4b1d"
WRONG = "wrong-Token-9f2e"


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[RunningServer]:
    with serve(write_repository(tmp_path), api_token=TOKEN, data_plane_token=True) as running:
        yield running


def infer(running: RunningServer, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{running.url}/v2/models/doubler/infer", json=BODY, headers=headers)


def test_wrong_tokens_are_throttled_per_address_on_the_data_plane(protected: RunningServer) -> None:
    assert infer(protected, TOKEN).status_code == 200
    for _ in range(5):
        assert infer(protected, WRONG).status_code == 401
    throttled = infer(protected, WRONG)
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "rate_limited" and int(throttled.headers["retry-after"]) >= 1
    # the address is locked out: the right token is not even looked at until the window passes
    assert infer(protected, TOKEN).status_code == 429
    assert httpx.get(f"{protected.url}/v2/health/ready").status_code == 200  # probes stay open


def test_wrong_tokens_are_throttled_on_the_control_api(tmp_path: Path) -> None:
    with serve(write_repository(tmp_path), api_token=TOKEN) as running:
        url = f"{running.url}/api/v1/deployments"
        body = {"model": "doubler", "version": "1"}
        statuses = [
            httpx.post(url, json=body, headers={"authorization": f"Bearer {WRONG}-{i}"}).status_code
            for i in range(7)
        ]
        assert statuses == [401] * 5 + [429] * 2
        assert infer(running, None).status_code == 200  # the open data plane answers that address


def test_the_throttle_refills_over_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    throttle = FailedTokenThrottle(failures=3, window=30.0)
    for _ in range(3):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == pytest.approx(10.0)  # one more try every 30 / 3 s
    assert throttle.wait("10.0.0.2") == 0  # per address
    now[0] += 10.0
    assert throttle.wait("10.0.0.1") == 0


def test_the_throttle_forgets_addresses_within_its_bound() -> None:
    throttle = FailedTokenThrottle(failures=2, window=60.0, max_addresses=100)
    for index in range(1000):
        throttle.failed(f"10.0.{index // 256}.{index % 256}")
    assert len(throttle._buckets) <= 100


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    bearer = BearerAuth(["first-token", TOKEN, "third-token"], rate=None)
    assert bearer.token(f"Bearer {TOKEN}") == TOKEN
    assert len(compared) == 3  # a match does not stop the loop early: the time says nothing
    compared.clear()
    with pytest.raises(auth.UnauthorizedError) as caught:
        bearer.token(f"Bearer {WRONG}")
    assert len(compared) == 3 and WRONG not in caught.value.message


def test_tokens_are_never_logged_or_echoed(
    protected: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        bodies = [infer(protected, token).text for token in (TOKEN, WRONG, WRONG, TOKEN)]
        control = httpx.post(
            f"{protected.url}/api/v1/deployments",
            json={"model": "doubler", "version": "1"},
            headers={"authorization": f"Bearer {WRONG}"},
        ).text
    for text in [caplog.text, control, *bodies]:
        assert TOKEN not in text and WRONG not in text


def test_an_open_data_plane_in_managed_mode_is_warned_about() -> None:
    managed = ServerConfig.model_validate({"server": {"state": "deployments.db", "api_token": TOKEN}})
    assert any("open data plane" in w for w in startup_warnings(managed))
    closed = ServerConfig.model_validate(
        {"server": {"state": "deployments.db", "api_token": TOKEN, "data_plane_token": True}}
    )
    assert startup_warnings(closed) == []
    assert startup_warnings(ServerConfig()) == []  # static mode: nothing changes through the API
    tokenless = ServerConfig.model_validate({"server": {"state": "deployments.db"}})
    assert any("without an API token" in w for w in startup_warnings(tokenless))
