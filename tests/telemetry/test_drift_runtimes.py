"""Output drift (PSI) is computed for every runtime, not only XGBoost: after a 3x input shift each
model's drift in ``/api/v1/stats`` is a number above the 'significant shift' line, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing import models
from ladle.testing.server import RunningServer, run_server

RUNTIMES = ("xgb", "onnx", "torch", "jax", "py")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("drift") / "models"
    models.build_xgboost(root / "xgb" / "1", n_estimators=10, max_depth=3, file_name="model.ubj")
    models.build_onnx_mlp(root / "onnx" / "1")
    models.build_torch_mlp(root / "torch" / "1")
    models.build_jax_mlp(root / "jax" / "1")
    models.build_python_handler(root / "py" / "1", handler_file=True)
    (root / "py" / "model.toml").write_text("trust_code = true\n")
    quality = {"enabled": True, "reference_rows": 200, "min_count": 50, "window": 30}
    config = ServerConfig.model_validate(
        {"server": {"repository": str(root)}, "telemetry": {"quality": quality}}
    )
    with run_server(Server(config)) as running:
        yield running


def test_every_runtime_reports_output_drift_after_a_shift(served: RunningServer) -> None:
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data.astype(np.float32)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for model in RUNTIMES:
            name = client.get(f"/v2/models/{model}").json()["inputs"] or [{"name": "input"}]
            for scale, count in ((1.0, 250), (3.0, 250)):
                for i in range(count):
                    x = rows[i : i + 1] * scale
                    body = {"inputs": [{"name": name[0]["name"], "datatype": "FP32", "shape": [1, 30],
                                        "data": x.ravel().tolist()}]}  # fmt: skip
                    assert client.post(f"/v2/models/{model}/infer", json=body).status_code == 200
        versions = {v["model"]: v for v in client.get("/api/v1/stats").json()["versions"]}
    for model in RUNTIMES:
        drift = versions[model]["drift"]
        assert drift is not None and drift > 0.25, (model, versions[model]["drift_features"])
