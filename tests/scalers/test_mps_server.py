"""The mps placement inside a real server: two GPU models packed by their model.toml ``resources``,
served over HTTP from worker processes that started with their MPS environment, and the private
daemon stopped when the server stops. On CPU: the handlers ignore the device; the MPS control program
is the recording stand-in of ``test_mps``."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ladle import PluginHost
from ladle.server import Server, load_config
from ladle.testing.server import run_server

from .test_mps import StandIn

HANDLER = """\
import os
import numpy as np

class Handler:
    def load(self, directory, options):
        self.seen = "|".join(os.environ.get(k, "") for k in (
            "CUDA_VISIBLE_DEVICES", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"))

    def predict(self, batch):
        return {"seen": np.array([self.seen] * batch.rows, dtype=object)}
"""


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    program = StandIn(tmp_path)
    monkeypatch.setenv("PATH", f"{program.program.parent}:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("MPS_STAND_IN_RECORD", str(program.record))
    yield program


def write_repository(root: Path) -> Path:
    models = {"big": ("12GiB", 0.5), "small": ("3GiB", 0.25)}
    for model, (memory, share) in models.items():
        (root / "models" / model / "1").mkdir(parents=True)
        (root / "models" / model / "1" / "handler.py").write_text(HANDLER)
        (root / "models" / model / "model.toml").write_text(
            textwrap.dedent(
                f"""\
                runtime = "python"
                trust_code = true
                device = "cuda"
                placement = "mps"
                instances = 2
                [resources]
                gpu_memory = "{memory}"
                gpu_share = {share}
                """
            )
        )
    config = root / "ladle.toml"
    config.write_text('[server]\nrepository = "models"\n[plugins.options.mps]\ngpus = "2x20GiB"\n')
    return config


def host_with_mps() -> PluginHost:
    """Every installed plugin, and the mps plugin by module where its entry point is not installed yet."""
    host = PluginHost().discover()
    if "mps" not in {r.name for r in host.registrations("placement")}:
        host.add_module("ladle.plugins.scalers.mps")
    return host.collect()


def seen(client: httpx.Client, model: str) -> str:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    value: str = output["data"][0]
    return value


def test_a_server_packs_gpu_models_into_mps_workers(stand_in: StandIn, tmp_path: Path) -> None:
    server = Server(load_config(write_repository(tmp_path)), host_with_mps())
    with run_server(server) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        answers = {seen(client, model) for model in ("big", "small") for _ in range(8)}
        placement = server.manager.placements["mps"]
        plan = placement.describe()
    # the big instances (13.2 GiB, half the SMs) need a GPU each; both small ones fit beside the first
    assert [[m["model"] for m in gpu["models"]] for gpu in plan["gpus"]] == [
        ["big", "small", "small"],
        ["big"],
    ]
    assert plan["unplaced"] == [] and plan["mps"]["active"] is True
    assert answers <= {"0|50|0=13517M", "1|50|0=13517M", "0|25|0=3380M"}
    assert {a.split("|")[1] for a in answers} == {"50", "25"}
    commands = stand_in.commands()
    assert commands[0] == "-d" and commands[-1] == "quit"  # started once for the server, stopped with it
    # in between only the supervisor's health queries (server list and status), never a change
    assert all(c == "get_server_list" or c.startswith("get_server_status") for c in commands[1:-1])
