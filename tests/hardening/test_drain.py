"""Drain as a load balancer sees it: on SIGTERM readiness turns 503 at once, the server goes on
answering for ``drain_grace`` seconds (each answer with ``Connection: close``), then stops
accepting; a request that reached the server is answered, even one that was half sent."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from hardening_support import (
    BODY,
    connect,
    free_port,
    infer_request,
    ladle_serve,
    port_of,
    read_response,
    serve,
    stop,
    wait_ready,
    write_repository,
)


def wait_for(predicate: object, timeout: float) -> float:
    """Seconds until ``predicate()`` held (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_readiness_turns_503_at_once_and_answers_go_on_with_connection_close(tmp_path: Path) -> None:
    with serve(write_repository(tmp_path), drain_grace=2.0) as running:
        url = running.url
        with httpx.Client(base_url=url, timeout=10) as client:
            before = client.post("/v2/models/doubler/infer", json=BODY)
            assert before.status_code == 200 and "connection" not in before.headers
            started = time.monotonic()
            running.begin_drain()
            wait_for(lambda: status(f"{url}/v2/health/ready") == 503, 1.0)
            assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": False, "draining": True}
            assert httpx.get(f"{url}/v2/health/live").status_code == 200  # not restarted for draining
            during = client.post("/v2/models/doubler/infer", json=BODY)  # the kept-alive connection
            assert during.status_code == 200 and during.headers["connection"] == "close"
            fresh = httpx.post(f"{url}/v2/models/doubler/infer", json=BODY)  # a new one, still accepted
            assert fresh.status_code == 200 and fresh.headers["connection"] == "close"
            assert time.monotonic() - started < 2.0  # all of that within the grace

        def refused() -> bool:
            try:
                httpx.get(f"{url}/v2/health/live", timeout=1)
            except httpx.ConnectError:
                return True
            return False

        assert wait_for(refused, 30) + (time.monotonic() - started) > 0  # it stops accepting in the end
        assert not running.uvicorn.started or running.uvicorn.should_exit


def test_half_sent_and_just_opened_connections_are_answered_after_accepting_stops(tmp_path: Path) -> None:
    with serve(write_repository(tmp_path), drain_grace=0.5, header_timeout=10.0) as running:
        port = port_of(running)
        request = infer_request(orjson.dumps(BODY))
        half = connect(port)
        half.sendall(request[:40])  # mid-headers when the server stops accepting
        opened = connect(port)  # connected, nothing sent yet
        running.begin_drain()

        def refused() -> bool:
            try:
                connect(port, timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 10)
        opened.sendall(request)
        half.sendall(request[40:])
        for sock in (half, opened):
            response = read_response(sock)
            assert response is not None, "a request that reached the server went unanswered"
            assert response.status == 200 and response.headers["connection"] == "close"
            assert response.json()["outputs"][0]["data"] == [2.0, 4.0]
            sock.close()


def write_service(tmp_path: Path, grace: float) -> Path:
    write_repository(tmp_path)
    config = tmp_path / "ladle.toml"
    config.write_text(
        f'[server]\ndrain_grace = {grace}\nrepository = "models"\n'
        '[plugins]\nmodules = ["hardening_runtime"]\n'
    )
    return config


class LoadBalancer:
    """Clients behind a load balancer: each sends requests on its own keep-alive connection while
    the balancer, probing readiness every 0.1 s, still routes to the server."""

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url = url
        self.routing = True
        self.marked_down_at: float | None = None
        self.results: list[tuple[float, int | str, str]] = []  # (time, status or error, connection)
        self._lock = threading.Lock()
        self._stop = False
        self._threads = [threading.Thread(target=self._probe)]
        self._threads += [threading.Thread(target=self._client) for _ in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop = True
        for thread in self._threads:
            thread.join(30)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=2) as probe:
            while not self._stop and self.routing:
                try:
                    if probe.get("/v2/health/ready").status_code != 200:
                        self.marked_down_at = time.monotonic()
                        self.routing = False
                except httpx.TransportError:
                    pass
                time.sleep(0.1)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop and self.routing:
                try:
                    response = client.post("/v2/models/doubler/infer", json=BODY)
                    outcome: tuple[float, int | str, str] = (
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("connection", ""),
                    )
                except httpx.HTTPError as exc:
                    outcome = (time.monotonic(), type(exc).__name__, "")
                with self._lock:
                    self.results.append(outcome)


def test_sigterm_behind_a_load_balancer_leaves_no_request_unanswered(tmp_path: Path) -> None:
    grace = 2.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ladle_serve(write_service(tmp_path, grace), port)
    try:
        wait_ready(url, process)
        balancer = LoadBalancer(url)
        balancer.start()
        time.sleep(1.0)
        terminated = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        exited = time.monotonic()
        balancer.stop()
    finally:
        log = stop(process)
    # the balancer saw readiness off while the server still answered (in-process: within 1 s)
    assert balancer.marked_down_at is not None and balancer.marked_down_at - terminated < grace, log
    assert exited - terminated >= grace  # it went on answering through the grace
    assert balancer.results, "no request was sent"
    unanswered = [r for r in balancer.results if r[1] != 200]
    assert not unanswered, f"{len(unanswered)} of {len(balancer.results)} requests failed: {unanswered[:5]}"
    # answers already on their way when the signal came may keep their connection; the rest close it
    after = [r for r in balancer.results if r[0] > terminated + 0.2]
    assert all(connection == "close" for _, _, connection in after)
    assert any(connection == "close" for _, _, connection in balancer.results)
    assert "draining (SIGTERM)" in log


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_or_sigint_skips_the_grace(tmp_path: Path, second: signal.Signals) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ladle_serve(write_service(tmp_path, 60.0), port)
    code = None
    try:
        wait_ready(url, process)
        if second == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)
            wait_for(lambda: status(f"{url}/v2/health/ready") == 503, 10.0)
        process.send_signal(second)
        code = process.wait(30)  # far sooner than the 60 s grace
    finally:
        log = stop(process)
    assert code == 0, log


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None
