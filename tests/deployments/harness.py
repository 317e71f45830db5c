"""A runtime whose behaviour each version directory chooses, and an in-process managed server.

A version directory holds ``behaviour.json``; the ``probe`` runtime reads it at load:

- ``shift``: added to every score (a version whose outputs drifted);
- ``flip``: scores become ``1 - score`` (a version that predicts the wrong labels);
- ``delay``: seconds slept per batch (a slow version);
- ``fail``: every batch of real input raises (warm-up's zeros pass: a version broken in a way its
  warm-up does not show); ``fail_warmup``: warm-up raises too; ``fail_load``: loading raises;
- ``live``: the file is read again before every batch, so a test can change a loaded version.

``CALLS[(model, version)]`` counts the rows each version computed.

Input ``x`` FP32 ``[-1, 4]``; output ``score`` FP32 ``[-1]`` = sigmoid(sum of the row) (+ shift).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import numpy as np

from ladle import (
    Answer,
    Arrays,
    Batch,
    InferenceRequest,
    LadleError,
    Pending,
    PluginHost,
    Runtime,
    Signature,
    TensorSpec,
    hookimpl,
)
from ladle.config import ServerConfig
from ladle.deployments.controller import DeploymentController
from ladle.serving import ModelEndpoint, ModelManager

P = ParamSpec("P")
BEHAVIOUR = "behaviour.json"
CALLS: Counter[tuple[str, str]] = Counter()


class ProbeRuntime(Runtime):
    name = "probe"

    def load(self) -> None:
        path = Path(self.spec.artifact) / BEHAVIOUR
        self.behaviour: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        if self.behaviour.get("fail_load"):
            raise RuntimeError("this version cannot load")

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("score", "FP32", (-1,)),))

    def predict(self, batch: Batch) -> Arrays:
        if self.behaviour.get("live"):
            self.behaviour = json.loads((Path(self.spec.artifact) / BEHAVIOUR).read_text())
        behaviour = self.behaviour
        CALLS[(self.spec.model, self.spec.version)] += batch.rows
        if behaviour.get("delay"):
            time.sleep(float(behaviour["delay"]))
        x = batch.inputs["x"].astype(np.float64)
        if behaviour.get("fail_warmup") or (behaviour.get("fail") and x.any()):
            raise RuntimeError("this version is broken")
        score = 1.0 / (1.0 + np.exp(-x.sum(axis=1)))
        if behaviour.get("flip"):
            score = 1.0 - score
        score = score + float(behaviour.get("shift", 0.0))
        return {"score": score.astype(np.float32)}


class ProbePlugin:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("probe", ProbeRuntime, detect=lambda d: (d / BEHAVIOUR).is_file())


def write_version(repo: Path, model: str, version: str, **behaviour: Any) -> Path:
    directory = repo / model / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BEHAVIOUR).write_text(json.dumps(behaviour))
    return directory


def make_host() -> PluginHost:
    host = PluginHost()
    host.add_plugin(ProbePlugin(), "probe")
    return host.discover()


def make_config(
    repo: Path, state: Path | None = None, models: dict[str, dict[str, Any]] | None = None, **server: Any
) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "server": {"repository": str(repo), "state": str(state) if state else None, **server},
            "defaults": {"timeout": 10.0},
            "models": models or {},
        }
    )


@contextlib.asynccontextmanager
async def serving(
    config: ServerConfig, host: PluginHost | None = None
) -> AsyncIterator[tuple[ModelManager, DeploymentController]]:
    """A started manager and controller; both closed on exit. ``predict`` and ``Load`` send through
    this manager's admission pipeline while it serves."""
    manager = ModelManager(config, host or make_host())
    _SERVING.append(manager)
    controller = DeploymentController(manager)
    await controller.start()
    try:
        yield manager, controller
    finally:
        _SERVING.remove(manager)
        await controller.close()
        await manager.close(5.0)


#: The managers ``serving`` has started and not yet closed (the innermost last).
_SERVING: list[ModelManager] = []


def admit(request: InferenceRequest) -> Pending:
    """Route, check and queue a request through the serving manager's admission pipeline."""
    return _SERVING[-1].admission.admit(request)


async def answer(request: InferenceRequest) -> Answer:
    """The whole answer of a request through the serving manager's admission pipeline."""
    return await _SERVING[-1].admission.infer(request)


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in a fresh event loop, failing it instead of hanging after 60 s."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return wrapper


def rows(n: int = 1, seed: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(n, 4)).astype(np.float32)


async def predict(endpoint: ModelEndpoint, x: np.ndarray, key: str | None = None) -> tuple[str, Answer]:
    """Send one request; the version that served it and the answer (raises its error)."""
    request = InferenceRequest(endpoint.name, {"x": x}, routing_key=key, deadline=time.monotonic() + 10.0)
    result = await answer(request)
    return result.version, result


@dataclass
class Load:
    """Steady open-loop load: ``rate`` requests/s from ``workers`` tasks; counts every outcome."""

    endpoint: ModelEndpoint
    rate: float
    workers: int = 4
    keys: bool = False
    on_result: Callable[[InferenceRequest, str, Arrays], None] | None = None
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    ids: dict[str, str] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: bool = False

    async def _worker(self, index: int) -> None:
        interval = self.workers / self.rate
        next_at = time.monotonic() + random.random() * interval
        while not self._stop:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += interval
            self.sent += 1
            x = rows(1)
            key = f"user-{random.randrange(1_000_000)}" if self.keys else None
            request = InferenceRequest(
                self.endpoint.name, {"x": x}, routing_key=key, deadline=time.monotonic() + 10.0
            )
            try:
                result = await answer(request)
            except LadleError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc.message}")
                continue
            version, outputs = result.version, result.outputs
            self.served[version] += 1
            self.ids[request.id] = version
            if self.on_result is not None:
                try:
                    self.on_result(request, version, outputs)
                except Exception as exc:  # keep the load going; the test sees the failure
                    self.failures.append(f"on_result: {type(exc).__name__}: {exc}")
            if not math.isfinite(float(outputs["score"][0])):
                self.failures.append("non-finite score")

    def start(self) -> Load:
        self._tasks = [asyncio.get_running_loop().create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
