"""The model manager on the control path: loading, routing tables, unloading, failures, hooks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InferenceRequest,
    InstanceState,
    ModelNotFoundError,
    Runtime,
    hookimpl,
)
from ladle.config import ServerConfig
from ladle.plugin_host import PluginHost
from ladle.server import Server


class ScaleRuntime(Runtime):
    """Multiplies by ``options.factor``; refuses to load when ``options.broken`` is set."""

    name = "scale"

    def load(self) -> None:
        if self.spec.options.get("broken"):
            raise RuntimeError("cannot load this artifact")
        self.factor = float(self.spec.options.get("factor", 2))

    def predict(self, batch: Batch) -> Arrays:
        return {"y": batch.inputs["x"] * self.factor}


class Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[str, str, InstanceState]] = []
        self.started = 0

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("scale", ScaleRuntime)

    @hookimpl
    def ladle_instance_state(self, model: str, version: str, instance: str, state: InstanceState) -> None:
        self.states.append((model, version, state))

    @hookimpl
    def ladle_startup(self, server: Any) -> None:
        self.started += 1


def make_server(tmp_path: Path, telemetry: dict[str, Any] | None = None) -> tuple[Server, Recorder]:
    repo = tmp_path / "models"
    for model, versions in {"good": ["1", "2"], "broken": ["1"]}.items():
        for version in versions:
            (repo / model / version).mkdir(parents=True)
        options = "broken = true" if model == "broken" else "factor = 3"
        (repo / model / "model.toml").write_text(
            f'runtime = "scale"\nversion_policy = "all"\noptions = {{ {options} }}\n'
        )
    recorder = Recorder()
    host = PluginHost()
    host.add_plugin(recorder, "recorder")
    host.discover()
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}, "telemetry": telemetry or {}})
    return Server(config, host), recorder


def infer(
    loop: asyncio.AbstractEventLoop, server: Server, model: str, version: str | None = None
) -> np.ndarray:
    async def go() -> Arrays:
        request = InferenceRequest(model, {"x": np.ones((1, 1), np.float32)}, version=version)
        return (await server.manager.admission.infer(request)).outputs

    return loop.run_until_complete(go())["y"]


def test_loading_routes_unloading_and_hooks(tmp_path: Path) -> None:
    server, recorder = make_server(tmp_path)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(server.start())
        manager = server.manager
        assert manager.failures == {"broken/1": "RuntimeError: cannot load this artifact"}
        assert not manager.ready  # one model failed, so the server is not ready; the other still serves
        good = manager.endpoint("good")
        assert good.table.versions == ("1", "2") and recorder.started == 1
        online_before = manager.foreground.at
        assert infer(loop, server, "good").tolist() == [[3.0]]
        assert manager.foreground.at > online_before  # the server's one clock paces background work
        assert [s for m, v, s in recorder.states if (m, v) == ("good", "1")][:3] == [
            InstanceState.LOADING,
            InstanceState.WARMING,
            InstanceState.READY,
        ]
        assert ("broken", "1", InstanceState.FAILED) in recorder.states
        loop.run_until_complete(manager.unload_version("good", "2", drain_timeout=1))
        assert good.table.versions == ("1",)
        assert infer(loop, server, "good", "1").tolist() == [[3.0]]
        with pytest.raises(ModelNotFoundError):
            infer(loop, server, "good", "2")
        assert ("good", "2", InstanceState.STOPPED) in recorder.states
        loop.run_until_complete(manager.load_version("good", "2"))
        assert good.table.versions == ("1", "2")  # loaded, warmed, then given traffic
        assert good.versions["2"].replicas.foreground is manager.foreground
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def test_telemetry_can_be_switched_off(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path, {"enabled": False})
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(server.start())
        infer(loop, server, "good")
        assert server.telemetry.stats.window("good", "2", 60).requests == 0
    finally:
        loop.run_until_complete(server.stop())
        loop.close()
    on, _ = make_server(tmp_path / "on")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(on.start())
        infer(loop, on, "good")
        assert on.telemetry.stats.window("good", "2", 60).requests == 1
    finally:
        loop.run_until_complete(on.stop())
        loop.close()


def test_a_static_traffic_split_from_config(tmp_path: Path) -> None:
    server, _ = make_server(tmp_path)
    (tmp_path / "models" / "good" / "model.toml").write_text(
        'runtime = "scale"\nversion_policy = "all"\nrouter = "canary"\ntraffic = { "1" = 90, "2" = 10 }\n'
    )
    server = Server(server.config, server.host)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(server.start())
        good = server.manager.endpoint("good")
        assert dict(good.table.weights) == {"1": 90, "2": 10}
        chosen = [
            good.router.route(InferenceRequest("good", {}, routing_key=f"k{i}"), good.table).primary.version
            for i in range(400)
        ]
        assert 300 < chosen.count("1") < 390 and chosen.count("2") > 10
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@pytest.mark.parametrize(
    ("traffic", "router", "fragment"),
    [
        ('{ "1" = 50, "3" = 50 }', "canary", "summing to 100"),
        ('{ "1" = 60, "2" = 30 }', "canary", "summing"),
        ('{ "1" = 50, "2" = 50 }', "single", "weighted router"),
    ],
)
def test_a_bad_static_split_fails_at_start(tmp_path: Path, traffic: str, router: str, fragment: str) -> None:
    server, _ = make_server(tmp_path)
    (tmp_path / "models" / "good" / "model.toml").write_text(
        f'runtime = "scale"\nversion_policy = "all"\nrouter = "{router}"\ntraffic = {traffic}\n'
    )
    with pytest.raises(ConfigError, match=fragment):
        Server(server.config, server.host)
