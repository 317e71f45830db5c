"""Model repositories a newcomer would start from: a scikit-learn classifier saved with skops, and a
Python handler that sleeps (to make requests queue, time out and be abandoned)."""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_HANDLER = """
import time

import numpy as np


class Handler:
    def signature(self):
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}

    def predict(self, batch):
        time.sleep(float(batch.inputs["x"][0, 0]))  # the first value says how long to take
        return {"y": batch.inputs["x"] * 2}
"""


def write_iris(directory: Path) -> Path:
    """A logistic regression on iris (4 FP64 features, 3 classes) as ``model.skops``."""
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(LogisticRegression(max_iter=500).fit(x, y), directory / "model.skops")
    return directory


def write_slow(directory: Path) -> Path:
    """A Python handler whose first input value is the seconds each batch takes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handler.py").write_text(SLOW_HANDLER)
    (directory.parent / "model.toml").write_text("trust_code = true\n")
    return directory


@pytest.fixture(scope="session")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One skops file, copied into each test's repository (fitting takes a moment)."""
    return write_iris(tmp_path_factory.mktemp("iris")) / "model.skops"


@pytest.fixture
def repository(tmp_path: Path, iris_artifact: Path) -> Path:
    """``iris`` (versions 1 and 2) and ``slow`` (version 1)."""
    repo = tmp_path / "models"
    for version in ("1", "2"):
        (repo / "iris" / version).mkdir(parents=True)
        (repo / "iris" / version / "model.skops").write_bytes(iris_artifact.read_bytes())
    write_slow(repo / "slow" / "1")
    return repo
