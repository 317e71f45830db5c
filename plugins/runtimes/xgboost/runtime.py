"""The XGBoost runtime: a Booster, one thread per instance by default, ``inplace_predict`` per batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xgboost

from ladle import Arrays, Batch, InvalidInputError, Runtime, Signature, TensorSpec
from ladle.errors import ConfigError

from . import ARTIFACTS


class XGBoostRuntime(Runtime):
    """Options: ``output`` (``"margin"`` or ``"probability"``, default probability for classifiers),
    ``input_name`` (default ``"input"``)."""

    name = "xgboost"

    def load(self) -> None:
        path = self.spec.path
        if path.is_dir():
            path = next((path / a for a in ARTIFACTS if (path / a).is_file()), path / ARTIFACTS[0])
        if not path.is_file():
            raise ConfigError(f"{path}: no XGBoost model file", file=str(path))
        self.booster = xgboost.Booster()
        self.booster.load_model(str(path))
        params: dict[str, Any] = {"nthread": self.spec.threads}
        device = self.spec.device
        if device.startswith("cuda"):
            params["device"] = device
        self.booster.set_param(params)
        self.device = device
        self.input_name = str(self.spec.options.get("input_name", "input"))
        self.margin = self.spec.options.get("output") == "margin"
        self.features = self.booster.num_features()
        self.model_bytes = Path(path).stat().st_size

    def signature(self) -> Signature:
        configured = super().signature()
        if configured is not None:
            return configured
        return Signature(
            inputs=(TensorSpec(self.input_name, "FP32", (-1, self.features)),),
            outputs=(TensorSpec("predict", "FP32", (-1,)),),
        )

    def predict(self, batch: Batch) -> Arrays:
        data = batch.inputs.get(self.input_name)
        if data is None:
            data = next(iter(batch.inputs.values()))
        if data.ndim != 2 or data.shape[1] != self.features:
            raise InvalidInputError(
                f"expected {self.features} features per row, got shape {list(data.shape)}",
                input=self.input_name,
            )
        if data.dtype.kind not in "fiub":
            raise InvalidInputError(f"expected numeric input, got {data.dtype}", input=self.input_name)
        output = self.booster.inplace_predict(data, predict_type="margin" if self.margin else "value")
        return {"predict": np.asarray(output, dtype=np.float32)}

    def memory_bytes(self) -> int:
        # A Booster holds roughly its serialised size in memory.
        return self.model_bytes
