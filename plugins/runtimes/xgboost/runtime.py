"""The XGBoost runtime: a Booster, one thread per instance by default, ``inplace_predict`` per batch."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost

from ladle import Arrays, Batch, ConfigError, InvalidInputError, Runtime, Signature, TensorSpec

from . import ARTIFACTS
from .dense import DensePredictor

log = logging.getLogger(__name__)

OPTIONS = ("output", "input_name")
OUTPUTS = ("probability", "margin")


def _device_transfer(device: str) -> Callable[[np.ndarray[Any, Any]], Any]:
    """How a batch reaches the booster's device: as is on the CPU, as a cupy array on a GPU when cupy
    is installed (otherwise XGBoost copies it through a DMatrix, slower but correct)."""
    if not device.startswith("cuda"):
        return lambda array: array
    try:
        import cupy
    except ImportError:
        log.warning("xgboost on %s without cupy: batches are copied to the GPU through a DMatrix", device)
        return lambda array: array
    return cupy.asarray  # type: ignore[no-any-return]


class XGBoostRuntime(Runtime):
    """Options: ``output`` (``"probability"``, the default, or ``"margin"``) and ``input_name``
    (default ``"input"``). ``device`` ``"cuda"``/``"cuda:N"`` predicts on that GPU; asking for a GPU
    that XGBoost cannot use is a ``ConfigError``, never a silent fall back to the CPU.

    Infinite feature values are refused (``InvalidInputError``); NaN means "missing", as in XGBoost.
    """

    name = "xgboost"

    def load(self) -> None:
        options = self.check_options(OPTIONS)
        output = str(options.get("output", "probability"))
        if output not in OUTPUTS:
            raise ConfigError(f"xgboost option output must be one of {list(OUTPUTS)}, got {output!r}")
        self.predict_type = "margin" if output == "margin" else "value"
        self.input_name = str(options.get("input_name", "input"))

        path = self.artifact(ARTIFACTS, "XGBoost model file")
        self.booster = xgboost.Booster()
        try:
            self.booster.load_model(str(path))
        except xgboost.core.XGBoostError as exc:
            raise ConfigError(f"{path}: not a loadable XGBoost model: {exc}", file=str(path)) from None
        params: dict[str, Any] = {"nthread": self.spec.threads}
        if self.spec.device.startswith("cuda"):
            params["device"] = self.spec.device
        self.booster.set_param(params)
        self.device = self._active_device()
        if self.spec.device.startswith("cuda") and not self.device.startswith("cuda"):
            raise ConfigError(
                f"device {self.spec.device!r} requested but XGBoost runs on {self.device!r} "
                f"(CUDA build: {xgboost.build_info().get('USE_CUDA')}); "
                "set device = 'cpu' to serve on the CPU"
            )
        self._to_device = _device_transfer(self.device)
        self.features = self.booster.num_features()
        probe = self.booster.inplace_predict(
            np.zeros((1, self.features), np.float32), predict_type=self.predict_type
        )
        self.output_shape = (-1, *np.shape(probe)[1:])
        self._dense = self._checked_dense_predictor() if self.device == "cpu" else None
        self.model_bytes = len(self.booster.save_raw("ubj"))
        log.info("xgboost %s: %d features, device %s", path, self.features, self.device)

    def _checked_dense_predictor(self) -> DensePredictor | None:
        """The C prediction path, if it agrees with ``inplace_predict`` on a probe with missing values."""
        predict = DensePredictor.create(self.booster, self.predict_type)
        if predict is None:
            return None
        probe = np.random.default_rng(0).normal(size=(4, self.features)).astype(np.float32)
        probe[0, 0] = np.nan
        expected = self.booster.inplace_predict(probe, predict_type=self.predict_type)
        try:
            got = predict(probe)
        except xgboost.core.XGBoostError as exc:
            log.warning("xgboost C prediction path failed its check (%s); using inplace_predict", exc)
            predict.close()
            return None
        if got is None or got.shape != np.shape(expected) or not np.array_equal(got, expected):
            log.warning("xgboost C prediction path disagrees with inplace_predict; using inplace_predict")
            predict.close()
            return None
        return predict

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "predict": "c_api" if self._dense is not None else "inplace_predict"}

    def _active_device(self) -> str:
        config = json.loads(self.booster.save_config())
        return str(config["learner"]["generic_param"].get("device", "cpu"))

    def signature(self) -> Signature:
        configured = super().signature()
        if configured is not None:
            return configured
        return Signature(
            inputs=(TensorSpec(self.input_name, "FP32", (-1, self.features)),),
            outputs=(TensorSpec("predict", "FP32", self.output_shape),),
        )

    def predict(self, batch: Batch) -> Arrays:
        data = batch.inputs.get(self.input_name)
        if data is None:
            if len(batch.inputs) != 1:
                raise InvalidInputError(
                    f"expected one input named {self.input_name!r}, got {sorted(batch.inputs)}",
                    input=self.input_name,
                )
            data = next(iter(batch.inputs.values()))
        if data.ndim != 2 or data.shape[1] != self.features:
            raise InvalidInputError(
                f"expected {self.features} features per row, got shape {list(data.shape)}",
                input=self.input_name,
            )
        if data.dtype.kind not in "fiub":
            raise InvalidInputError(f"expected numeric input, got {data.dtype}", input=self.input_name)
        if data.dtype.kind == "f" and np.isinf(data).any():
            rows = np.flatnonzero(np.isinf(data).any(axis=1))[:10].tolist()
            raise InvalidInputError(f"rows {rows} hold infinite values", input=self.input_name)
        output = self._dense(data) if self._dense is not None else None
        if output is None:
            output = self.booster.inplace_predict(self._to_device(data), predict_type=self.predict_type)
        if not isinstance(output, np.ndarray):
            output = output.get()  # a cupy array back from the GPU
        return {"predict": np.asarray(output, dtype=np.float32)}

    def memory_bytes(self) -> int:
        # A Booster holds about its compact (UBJ) serialised size, whatever the file's format.
        return self.model_bytes

    def unload(self) -> None:
        dense = self.__dict__.pop("_dense", None)
        if dense is not None:
            dense.close()
        self.__dict__.pop("booster", None)
