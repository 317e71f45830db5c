"""Connection limits (``ladle.http.limits``) against a real server, with raw sockets doing what an
attacker does: headers or bodies that never finish, idle connections, huge headers, too many
connections. Every refusal is a JSON body with ``Connection: close``; the server closes after it."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from hardening_support import (
    BODY,
    closed_by_server,
    connect,
    infer_request,
    port_of,
    read_response,
    serve,
    write_repository,
)

from ladle.testing.server import RunningServer

LIMITS = {
    "header_timeout": 0.6,
    "body_timeout": 0.6,
    "min_body_rate": 1000,
    "keep_alive_timeout": 0.8,
    "max_header_bytes": 4096,
    "max_headers": 20,
}
MARGIN = 5.0  # seconds the checks below allow beyond a timeout (the sweeper runs every ~0.1 s)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = write_repository(tmp_path_factory.mktemp("limits"))
    with serve(repo, **LIMITS) as running:
        yield running


@pytest.fixture
def port(limited: RunningServer) -> int:
    return port_of(limited)


def assert_refused(port: int, data: bytes, status: int, code: str) -> dict[str, object]:
    with connect(port) as sock:
        sock.sendall(data)
        started = time.monotonic()
        response = read_response(sock)
        assert response is not None, "the server closed without answering"
        assert time.monotonic() - started < MARGIN
        assert response.status == status, response.body
        assert response.headers["content-type"] == "application/json"
        assert response.headers["connection"] == "close"
        body = response.json()
        assert body["code"] == code and isinstance(body["error"], str)
        assert closed_by_server(sock, MARGIN)
        return body


def test_headers_that_never_finish_get_408(port: int) -> None:
    request = b"POST /v2/models/doubler/infer HTTP/1.1\r\nHost: x\r\n"
    body = assert_refused(port, request, 408, "request_timeout")
    assert "headers" in str(body["error"])


def test_a_header_trickle_does_not_extend_the_header_deadline(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        started = time.monotonic()
        for index in range(40):  # one header line every 0.1 s: 4 s in all if the server let it
            sock.sendall(b"X-Pad-%d: x\r\n" % index)
            if select.select([sock], [], [], 0.1)[0]:
                break  # the answer is there
        response = read_response(sock)
        assert response is not None and response.status == 408
        assert time.monotonic() - started < LIMITS["header_timeout"] + 2.0


def test_a_body_shorter_than_its_content_length_gets_408(port: int) -> None:
    request = b'POST /v2/models/doubler/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inp'
    body = assert_refused(port, request, 408, "request_timeout")
    assert "body" in str(body["error"])


def test_an_unterminated_chunked_body_gets_408(port: int) -> None:
    request = (
        b"POST /v2/models/doubler/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"inp\r\n'
    )
    assert_refused(port, request, 408, "request_timeout")


def test_a_body_arriving_at_the_minimum_rate_is_served(port: int) -> None:
    body = orjson.dumps(BODY) + b" " * 1500  # 1.5 s of allowance at 1000 B/s, on top of 0.6 s
    with connect(port) as sock:
        request = infer_request(body)
        head, payload = request[: request.index(b"\r\n\r\n") + 4], request[request.index(b"\r\n\r\n") + 4 :]
        sock.sendall(head)
        for start in range(0, len(payload), 400):  # 400 bytes every 0.2 s: 2000 B/s, above the minimum
            sock.sendall(payload[start : start + 400])
            time.sleep(0.2)
        response = read_response(sock)
        assert response is not None and response.status == 200, response
        assert response.json()["outputs"][0]["data"] == [2.0, 4.0]


def test_an_idle_connection_is_closed_before_and_between_requests(port: int) -> None:
    with connect(port) as sock:
        assert closed_by_server(sock, LIMITS["keep_alive_timeout"] + MARGIN)
    with connect(port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock)
        assert response is not None and response.status == 200
        assert "connection" not in response.headers  # kept alive ...
        assert closed_by_server(sock, LIMITS["keep_alive_timeout"] + MARGIN)  # ... until idle too long


def test_a_connection_in_use_is_not_closed_as_idle(port: int) -> None:
    with connect(port) as sock:
        for _ in range(6):  # 6 requests 0.3 s apart: 1.8 s on one connection, each gap under 0.8 s
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert response is not None and response.status == 200
            time.sleep(0.3)


def test_headers_too_large_get_431(port: int) -> None:
    big = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    assert_refused(port, big, 431, "headers_too_large")
    many = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(30))
    assert_refused(port, many + b"\r\n", 431, "headers_too_large")


def test_headers_too_large_sent_in_pieces_get_431(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(10):
            try:
                sock.sendall(b"a" * 1000)
            except OSError:
                break
            time.sleep(0.02)
        response = read_response(sock)
        assert response is not None and response.status == 431


def test_headers_within_the_limits_pass(limited: RunningServer) -> None:
    headers = {f"x-extra-{i}": "v" * 100 for i in range(10)}
    response = httpx.post(f"{limited.url}/v2/models/doubler/infer", json=BODY, headers=headers)
    assert response.status_code == 200


def test_malformed_http_gets_a_json_400(port: int) -> None:
    assert_refused(port, b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request")


def test_real_clients_are_served_while_hundreds_of_slow_connections_are_cut(limited: RunningServer) -> None:
    port = port_of(limited)
    slow = [connect(port) for _ in range(300)]
    for index, sock in enumerate(slow):
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n" if index % 2 else b"")
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        for _ in range(20):
            assert client.post("/v2/models/doubler/infer", json=BODY).status_code == 200
    deadline = max(LIMITS["header_timeout"], LIMITS["keep_alive_timeout"]) + MARGIN
    assert all(closed_by_server(sock, deadline) for sock in slow)
    for sock in slow:
        sock.close()


def test_beyond_max_connections_unused_ones_make_room_then_busy_ones_refuse(tmp_path: Path) -> None:
    repo = write_repository(tmp_path)
    with serve(repo, max_connections=8, header_timeout=5.0, keep_alive_timeout=30.0) as running:
        port = port_of(running)
        unused = [connect(port) for _ in range(8)]
        time.sleep(0.2)
        with connect(port) as sock:  # the 9th: the oldest unused connection is closed for it
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert response is not None and response.status == 200
        assert closed_by_server(unused[0], 2.0)
        for sock in unused:
            sock.close()
        time.sleep(0.2)
        busy = [connect(port) for _ in range(8)]
        for sock in busy:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # mid-request: never evicted
        time.sleep(0.2)
        with connect(port) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert response is not None and response.status == 503
            assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
            assert response.json()["code"] == "too_many_connections"
        for sock in busy:  # each finishes its request and is answered
            sock.sendall(b"\r\n")
            answered = read_response(sock)
            assert answered is not None and answered.status == 200
            sock.close()
