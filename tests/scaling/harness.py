"""A runtime whose cost and faults the test chooses, and a real server around it.

The ``sleepy`` runtime (input ``x`` FP32 ``[-1, 2]``, outputs ``y = 2x`` and ``pid``) sleeps
``delay`` seconds per batch plus ``row_delay`` per row, and ``load_delay`` seconds to load. A row
whose first value is ``HANG`` sleeps ``hang`` seconds (a stuck instance); ``fail_file`` names a file
whose presence makes ``load`` fail (a version whose replacements cannot start). Warm-up's zeros
cost nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ladle import Arrays, Batch, PluginHost, Runtime, Signature, TensorSpec, hookimpl
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

HANG = -1.0
#: The control API token of the test servers (changes need one).
TOKEN = "scaling-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class SleepyRuntime(Runtime):
    name = "sleepy"

    def load(self) -> None:
        options = self.spec.options
        fail = options.get("fail_file")
        if fail and Path(str(fail)).exists():
            raise RuntimeError("this version cannot load now")
        time.sleep(float(options.get("load_delay", 0.0)))
        self.delay = float(options.get("delay", 0.0))
        self.row_delay = float(options.get("row_delay", 0.0))
        self.hang = float(options.get("hang", 30.0))

    def signature(self) -> Signature:
        return Signature(
            (TensorSpec("x", "FP32", (-1, 2)),),
            (TensorSpec("y", "FP32", (-1, 2)), TensorSpec("pid", "INT64", (-1,))),
        )

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        if x.any():
            if (x[:, 0] == HANG).any():
                time.sleep(self.hang)
            time.sleep(self.delay + self.row_delay * batch.rows)
        return {"y": x * 2, "pid": np.full(batch.rows, os.getpid(), dtype=np.int64)}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("sleepy", SleepyRuntime)


def make_host() -> PluginHost:
    host = PluginHost()
    host.add_module(__name__)  # by module name, so worker processes can rebuild the runtime
    return host.discover()


def write_model(repo: Path, model: str, toml: str, versions: tuple[str, ...] = ("1",)) -> Path:
    for version in versions:
        (repo / model / version).mkdir(parents=True, exist_ok=True)
    (repo / model / "model.toml").write_text(f'runtime = "sleepy"\n{toml}')
    return repo


def config(repo: Path, **server: Any) -> ServerConfig:
    return ServerConfig.model_validate({"server": {"repository": str(repo), "api_token": TOKEN, **server}})


@contextlib.contextmanager
def serving(cfg: ServerConfig, **kwargs: Any) -> Iterator[RunningServer]:
    with run_server(Server(cfg, make_host()), **kwargs) as running:
        yield running


def body(value: float = 1.0, rows: int = 1) -> dict[str, Any]:
    x = np.full((rows, 2), value, dtype=np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def infer(
    client: httpx.Client, model: str, value: float = 1.0, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json=body(value), headers=headers or {})


def until(condition: Any, timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll ``condition()`` until it is truthy; its value, or AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(every)


class Load:
    """``clients`` threads each sending back-to-back requests until stopped; records every answer."""

    def __init__(self, url: str, model: str, clients: int, timeout: float = 20.0) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.statuses: list[int] = []
        self.retry_after: list[str | None] = []
        self.pids: set[int] = set()
        self._stop = False
        self._pool = concurrent.futures.ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop:
                response = infer(client, self.model)
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
                    self.pids.add(int(outputs["pid"][0]))
                else:
                    self.retry_after.append(response.headers.get("retry-after"))

    def stop(self) -> None:
        """Stop the clients; raises whatever a client raised (a timeout: a request hung)."""
        self._stop = True
        for future in self._futures:
            future.result(timeout=self.timeout + 5)
        self._pool.shutdown()
