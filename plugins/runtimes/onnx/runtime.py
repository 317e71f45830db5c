"""The ONNX runtime: one onnxruntime ``InferenceSession`` per instance.

Execution providers are tried in the configured order, keeping only those this onnxruntime build
offers; after the session is created its *active* providers are read back, because a GPU build
lists CUDA and TensorRT even on a machine where they cannot start and then falls back silently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InvalidInputError,
    Runtime,
    Signature,
    TensorSpec,
    named_input,
    run_fixed_batches,
)

from . import ARTIFACT

log = logging.getLogger(__name__)

OPTIONS = ("providers", "provider_options", "outputs")

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")

#: onnxruntime type strings -> V2 datatypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def provider_name(name: str) -> str:
    """``"CUDA"``, ``"cuda"`` or ``"CUDAExecutionProvider"`` -> ``"CUDAExecutionProvider"``."""
    if name.endswith("ExecutionProvider"):
        return name
    return _PROVIDER_ALIASES.get(name.lower(), f"{name}ExecutionProvider")


def _dims(shape: list[Any]) -> tuple[int, ...]:
    """onnxruntime shapes use names or ``None`` for free dimensions; V2 uses ``-1``."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _free_batch(spec: TensorSpec, size: int) -> TensorSpec:
    if spec.shape and spec.shape[0] == size:
        return TensorSpec(spec.name, spec.datatype, (-1, *spec.shape[1:]))
    return spec


class OnnxRuntime(Runtime):
    """Options:

    - ``providers``: ordered preference, e.g. ``["TensorRT", "CUDA", "CPU"]``; the default is
      ``["CUDA"]`` for a ``cuda`` device and ``["CPU"]`` otherwise. Providers this build lacks are
      skipped; if none of the listed providers is active after creation, loading fails.
    - ``provider_options``: ``{"CUDA": {...}}``, passed to that provider (``device_id`` defaults to
      the spec's ``cuda:N``).
    - ``outputs``: the output names to compute (default: every tensor output).

    The thread budget sets both intra- and inter-op pools to ``spec.threads``. A graph whose inputs
    all have a fixed first dimension is served in slices of that size (``max_batch_rows``).
    """

    name = "onnx"

    def load(self) -> None:
        options = self.check_options(OPTIONS)
        path = self.artifact([ARTIFACT], "ONNX model file")

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self.spec.threads
        session_options.inter_op_num_threads = self.spec.threads
        session_options.log_severity_level = 3  # errors only; warnings about shape merging are noise
        providers = self._providers()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes for every kind of bad file
            raise ConfigError(f"{path}: onnxruntime cannot load it: {exc}", file=str(path)) from None
        self.providers: list[str] = list(self.session.get_providers())
        self._check_providers([p if isinstance(p, str) else p[0] for p in providers])

        self._inputs = [
            TensorSpec(i.name, DATATYPES.get(i.type, i.type), _dims(i.shape))
            for i in self.session.get_inputs()
        ]
        self._outputs = self._select_outputs(options.get("outputs"))
        self.output_names = [spec.name for spec in self._outputs]
        firsts = {spec.shape[0] if spec.shape else -1 for spec in self._inputs}
        self.fixed_batch: int | None = None
        if len(firsts) == 1 and min(firsts) > 0:
            # Served in slices of the fixed size, so clients may send any number of rows.
            self.fixed_batch = self.max_batch_rows = min(firsts)
            self._inputs = [_free_batch(spec, self.fixed_batch) for spec in self._inputs]
            self._outputs = [_free_batch(spec, self.fixed_batch) for spec in self._outputs]
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4  # a refused input is answered to its client, not logged
        self.model_bytes = _initializer_bytes(path)
        log.info("onnx %s: providers %s", path, self.providers)

    def _providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        options = self.spec.options
        device = self.spec.device
        requested = options.get("providers") or (["CUDA"] if device.startswith("cuda") else ["CPU"])
        if isinstance(requested, str):
            requested = [requested]
        names = [provider_name(str(p)) for p in requested]
        available = ort.get_available_providers()
        chosen = [name for name in names if name in available]
        if not chosen:
            raise ConfigError(
                f"none of the requested onnx providers {names} is available; "
                f"this onnxruntime offers {available}"
            )
        extra = {provider_name(k): dict(v) for k, v in (options.get("provider_options") or {}).items()}
        device_id = device.partition(":")[2] or "0"
        result: list[str | tuple[str, dict[str, Any]]] = []
        for name in chosen:
            settings = extra.get(name, {})
            if name in _GPU_PROVIDERS:
                settings = {"device_id": int(device_id), **settings}
            result.append((name, settings) if settings else name)
        return result

    def _check_providers(self, chosen: list[str]) -> None:
        active = [name for name in chosen if name in self.providers]
        if not active:
            raise ConfigError(
                f"onnxruntime started none of the requested providers {chosen}; active: {self.providers}"
            )
        if active[0] != chosen[0]:
            log.warning("onnx: %s did not start; running on %s", chosen[0], self.providers)

    def _select_outputs(self, wanted: Any) -> list[TensorSpec]:
        outputs = []
        for output in self.session.get_outputs():
            if output.type not in DATATYPES:
                log.warning(
                    "onnx: output %r of type %s is not a tensor; it is not served", output.name, output.type
                )
                continue
            outputs.append(TensorSpec(output.name, DATATYPES[output.type], _dims(output.shape)))
        if wanted:
            known = {spec.name: spec for spec in outputs}
            missing = [name for name in wanted if name not in known]
            if missing:
                raise ConfigError(
                    f"onnx option outputs names {missing}; the model's tensor outputs are {sorted(known)}"
                )
            outputs = [known[name] for name in wanted]
        return outputs

    def signature(self) -> Signature:
        configured = super().signature()
        if configured is not None:
            return configured
        return Signature(inputs=tuple(self._inputs), outputs=tuple(self._outputs))

    def describe(self) -> dict[str, Any]:
        """What the instance runs on: the providers onnxruntime actually started."""
        return {"providers": self.providers, "fixed_batch": self.fixed_batch}

    def predict(self, batch: Batch) -> Arrays:
        feed = self._feed(batch.inputs)
        rows = batch.rows
        if self.fixed_batch is not None and rows != self.fixed_batch:
            return run_fixed_batches(self._run, feed, rows, self.fixed_batch)
        return self._run(feed)

    def _feed(self, inputs: Arrays) -> Arrays:
        names = [spec.name for spec in self._inputs]
        return {name: named_input(inputs, name, names) for name in names}

    def _run(self, feed: Arrays) -> Arrays:
        try:
            values = self.session.run(self.output_names, feed, self.run_options)
        except InvalidArgument as exc:  # bad shape, type or value (e.g. an index out of range)
            raise InvalidInputError(
                str(exc).replace("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ", "")
            ) from None
        return dict(zip(self.output_names, values, strict=True))

    def memory_bytes(self) -> int:
        return self.model_bytes

    def unload(self) -> None:
        self.__dict__.pop("session", None)


def _initializer_bytes(path: Path) -> int:
    """Bytes of the graph's weights (initializers) when the ``onnx`` package is installed, else the
    size of the model file and its external-data file."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        data = path.with_name(path.name + ".data")
        return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total
