"""One real server per test session: an XGBoost model plus the behaviour runtime, over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ladle.config import ServerConfig
from ladle.plugin_host import PluginHost
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server


def write_repository(root: Path) -> Path:
    from ladle.testing.models import build_xgboost

    repo = root / "models"
    build_xgboost(repo / "bc" / "1", n_estimators=20, max_depth=3, file_name="model.ubj")
    for name, extra in {
        "echo": 'version_policy = "all"\n',
        "tiny_queue": "[batcher]\nmax_queue_size = 1\nmax_batch_size = 4\n",
        "counted": "",
        "cached": "resilience = { cache = { ttl = 60, max_entries = 10 } }\n",
    }.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "model.toml").write_text(f'runtime = "behaviour"\ntimeout = 5.0\n{extra}')
    (repo / "echo" / "2").mkdir()
    return repo


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("http"))


@pytest.fixture(scope="session")
def running(repository: Path) -> Iterator[RunningServer]:
    host = PluginHost()
    host.add_module("behaviour_runtime")
    host.discover()
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config, host)) as running:
        yield running


@pytest.fixture(scope="session")
def client(running: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def rows() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data.astype(np.float32)
