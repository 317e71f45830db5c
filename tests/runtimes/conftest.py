"""Shared fixtures of the runtime tests: the plugin host, the data, and a loaded-runtime factory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from ladle import PluginHost, Runtime, RuntimeSpec
from ladle.testing import models

LoadRuntime = Callable[..., Runtime]


def gpu_present() -> bool:
    """An NVIDIA device node exists (checked without importing any framework)."""
    return os.path.exists("/dev/nvidia0")


@pytest.fixture
def cuda_device() -> str:
    """The GPU to test on; skips where there is none (such tests are also marked ``gpu``)."""
    if not gpu_present():
        pytest.skip("no CUDA device on this machine")
    return "cuda:0"


@pytest.fixture
def no_gpu() -> None:
    """Skips where a GPU exists: for checks that asking for an absent GPU is refused."""
    if gpu_present():
        pytest.skip("a CUDA device is present")


@pytest.fixture(scope="session")
def host() -> PluginHost:
    return PluginHost().discover()


@pytest.fixture(scope="session")
def features() -> np.ndarray[Any, Any]:
    """All 569 breast-cancer rows, float32."""
    return models.breast_cancer()[0]


@pytest.fixture(scope="session")
def reference(features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The MLP's probabilities computed by numpy, for every row."""
    return models.mlp_weights().probability(features)


@pytest.fixture
def load_runtime(host: PluginHost) -> Iterator[LoadRuntime]:
    """``load_runtime(plugin, artifact, **spec_fields)``: a runtime loaded and warmed up; unloaded after."""
    loaded: list[Runtime] = []

    def load(plugin: str, artifact: Any, **fields: Any) -> Runtime:
        runtime = host.load("runtime", plugin)(RuntimeSpec(plugin=plugin, artifact=str(artifact), **fields))
        assert isinstance(runtime, Runtime)
        runtime.load()
        loaded.append(runtime)
        runtime.warmup()
        return runtime

    yield load
    for runtime in loaded:
        runtime.unload()
