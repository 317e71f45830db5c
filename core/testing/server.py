"""Run a real ladle server on an ephemeral loopback port, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..server import Server

__all__ = ["RunningServer", "run_server"]


class RunningServer:
    def __init__(self, server: Server, url: str, uvicorn_server: Any) -> None:
        self.server = server
        self.url = url
        self.uvicorn = uvicorn_server

    def begin_drain(self) -> None:
        """What SIGTERM does to ``ladle serve``: readiness off, ``drain_grace`` s of answers, then stop."""
        self.uvicorn.begin_drain()


@contextlib.contextmanager
def run_server(
    server: Server, *, ready_timeout: float = 120.0, wait_ready: bool = True
) -> Iterator[RunningServer]:
    """Serve ``server`` on 127.0.0.1 in a background thread; waits until ``/v2/health/ready`` is true."""
    import httpx

    from ..http.app import create_app
    from ..http.limits import Drain, http_server

    # Port 0 and a socket uvicorn binds itself: a pre-bound socket handed to uvicorn loses
    # TCP_NODELAY on accepted connections and every response then waits ~40 ms for a delayed ACK.
    drain = Drain()
    app = create_app(server, drain)
    userver = http_server(app, server.config.server, drain, host="127.0.0.1", port=0, lifespan="on")
    thread = threading.Thread(target=lambda: asyncio.run(userver.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not userver.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("ladle server did not start")
        time.sleep(0.01)
    port = userver.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            try:
                if client.get(path).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            failed = not server.manager.loading and server.manager.failures
            if failed or time.monotonic() > deadline or not thread.is_alive():
                userver.should_exit = True
                thread.join(timeout=30)
                raise RuntimeError(
                    f"ladle server at {url} did not become ready; failures: {server.manager.failures}"
                )
            time.sleep(0.05)
    try:
        yield RunningServer(server, url, userver)
    finally:
        userver.should_exit = True
        thread.join(timeout=60)
