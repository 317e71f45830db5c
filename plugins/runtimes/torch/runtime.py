"""The PyTorch runtime.

Three artifact kinds, tried in this order in the version directory:

- ``model.pt2``: a ``torch.export`` program, loaded with ``torch.export.load``. Its signature
  (names, dtypes, dynamic dimensions) comes from the program; one exported with a static batch
  dimension is served in slices of that size (``max_batch_rows``).
- ``model.pt`` / ``model.ts``: TorchScript, loaded with ``torch.jit.load`` (TorchScript's own
  restricted format, not Python pickle). TorchScript records no shapes or dtypes, so such a model
  states no signature (its metadata lists no inputs) until its config gives one, e.g. in
  ``model.toml``::

      signature = { inputs = [{ name = "input", datatype = "FP32", shape = [-1, 30] }],
                    outputs = [{ name = "probability", datatype = "FP32", shape = [-1] }] }

  With it, wrong names, dtypes and shapes are refused (422) before the model runs; without it,
  the shape and dtype errors the module raises are answered 400 (``InvalidInputError``) naming
  the input and what the model expected, never with TorchScript's traceback.
- ``model.pt`` holding a pickled ``nn.Module`` (``torch.save(model)``): unpickling runs arbitrary
  code, so it is loaded only when the model sets ``trust_code``.

``torch.export.load`` itself falls back to pickle for some payloads, so without ``trust_code`` a
``.pt2`` archive is inspected first and refused if it holds any pickled part.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InvalidInputError,
    Runtime,
    Signature,
    TensorSpec,
    datatype_of,
    named_input,
    run_fixed_batches,
)

from . import ARTIFACTS

log = logging.getLogger(__name__)

OPTIONS = ("output_names",)

#: torch dtypes -> V2 datatypes (bfloat16 is returned as FP32: numpy has no bfloat16).
DATATYPES = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.bfloat16: "FP32",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


def _free_batch(spec: TensorSpec, size: int) -> TensorSpec:
    if spec.shape and spec.shape[0] == size:
        return TensorSpec(spec.name, spec.datatype, (-1, *spec.shape[1:]))
    return spec


def _dims(shape: Iterable[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _key_name(path: tuple[Any, ...]) -> str:
    keys = [str(getattr(entry, "key", "")) for entry in path if hasattr(entry, "key")]
    return ".".join(k for k in keys if k)


def output_items(result: Any) -> list[tuple[str, Any]]:
    """Name the leaves of a model's result: dict keys where it has them, else ``output`` or ``output_i``."""
    if isinstance(result, torch.Tensor):
        return [("output", result)]
    if isinstance(result, dict) and all(isinstance(v, torch.Tensor) for v in result.values()):
        return [(str(k), v) for k, v in result.items()]
    leaves, _ = pytree.tree_flatten_with_path(result)
    items = []
    for index, (path, leaf) in enumerate(leaves):
        items.append((_key_name(path) or (f"output_{index}" if len(leaves) > 1 else "output"), leaf))
    return items


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/`` and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def check_exported_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would unpickle or load native code from."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(
            f"{path}: {why}; loading it could run arbitrary code. Set trust_code = true for this model "
            "only if you trust its source",
            file=str(path),
        )

    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path}: not a torch.export archive (not a zip file)", file=str(path))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            inner = name.partition("/")[2]
            if inner.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
                raise refuse(f"it holds compiled native code ({inner})")
            if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
                raise refuse(f"it uses the legacy pickled layout ({inner})")
            if inner.endswith(("_weights_config.json", "_constants_config.json")):
                config = json.loads(archive.read(name))
                for key, payload in config.get("config", {}).items():
                    pickled = payload.get("use_pickle") or (
                        inner.startswith("data/constants/")
                        and not str(payload.get("path_name", "")).startswith("tensor_")
                    )
                    if pickled:
                        raise refuse(f"its entry {key!r} is a pickled object")
            if inner.startswith("data/sample_inputs/"):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise refuse(f"its sample inputs ({inner}) are pickled objects") from None


class TorchRuntime(Runtime):
    """Options: ``output_names``, names for the model's outputs in order (default: the keys of a
    returned dict, else ``output`` or ``output_0``, ``output_1``, ...).

    ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; asking for an absent GPU is a
    ``ConfigError``. The thread budget is applied with ``torch.set_num_threads`` (process-wide).
    Index and value errors raised by the model (an embedding index out of range, a failed shape
    guard) are answered as ``InvalidInputError``.
    """

    name = "torch"

    def load(self) -> None:
        options = self.check_options(OPTIONS)
        self.output_names: list[str] | None = (
            list(options["output_names"]) if options.get("output_names") else None
        )
        self.device = _device(self.spec.device)
        torch.set_num_threads(self.spec.threads)

        path = self.artifact(ARTIFACTS, f"torch model file ({', '.join(ARTIFACTS)})")
        self.fixed_batch: int | None = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        try:
            if path.suffix == ".pt2":
                self._load_exported(path)
            elif is_torchscript(path):
                self.kind = "torchscript"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # deprecated upstream, still served
                    self.module = torch.jit.load(  # type: ignore[no-untyped-call]
                        str(path), map_location=self.device
                    ).eval()
                self.input_names = [a.name for a in self.module.forward.schema.arguments[1:]]
            elif self.spec.trust_code:
                self._load_pickled(path)
            else:
                raise ConfigError(
                    f"{path}: not TorchScript but a pickled object; unpickling runs arbitrary code. Export "
                    "the model (torch.export or torch.jit) or set trust_code = true for this model",
                    file=str(path),
                )
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{path}: torch cannot load it: {type(exc).__name__}: {exc}", file=str(path)
            ) from None
        if self.fixed_batch is not None:
            self.max_batch_rows = self.fixed_batch
        self.model_bytes = self._tensor_bytes()
        log.info("torch %s (%s) on %s", path, self.kind, self.device)

    def _load_exported(self, path: Path) -> None:
        self.kind = "exported"
        if not self.spec.trust_code:
            check_exported_archive(path)
        program = torch.export.load(str(path))
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        values = {node.name: node.meta.get("val") for node in program.graph.nodes}
        names = list(program.graph_signature.user_inputs)
        self.input_names = [str(name) for name in names]
        fakes = [values[name] for name in names]
        self._inputs = [
            TensorSpec(str(n), DATATYPES.get(v.dtype, "FP32"), _dims(v.shape))
            for n, v in zip(names, fakes, strict=True)
        ]
        firsts = {spec.shape[0] if spec.shape else -1 for spec in self._inputs}
        if len(firsts) == 1 and min(firsts) > 0:
            self.fixed_batch = min(firsts)
        out_fakes = [values[name] for name in program.graph_signature.user_outputs]
        structure = pytree.tree_unflatten(out_fakes, program.call_spec.out_spec)
        outputs = output_items(structure)
        if self.output_names:
            outputs = list(zip(self.output_names, (fake for _, fake in outputs), strict=False))
        self._outputs = [TensorSpec(n, DATATYPES.get(f.dtype, "FP32"), _dims(f.shape)) for n, f in outputs]
        if self.fixed_batch is not None:
            # Served in slices of the fixed size, so clients may send any number of rows.
            self._inputs = [_free_batch(s, self.fixed_batch) for s in self._inputs]
            self._outputs = [_free_batch(s, self.fixed_batch) for s in self._outputs]
        self.in_spec = program.call_spec.in_spec
        self.module = program.module()
        self._constants = [t for t in program.constants.values() if isinstance(t, torch.Tensor)]

    def _load_pickled(self, path: Path) -> None:
        self.kind = "pickled"
        module = torch.load(str(path), map_location=self.device, weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(
                f"{path}: holds a {type(module).__name__}, not an nn.Module (a state dict has no "
                "architecture; export the model with torch.export)",
                file=str(path),
            )
        self.module = module.eval()
        self.input_names = list(inspect.signature(module.forward).parameters)

    def _tensor_bytes(self) -> int:
        tensors = [*self.module.parameters(), *self.module.buffers(), *getattr(self, "_constants", ())]
        seen: set[int] = set()
        total = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return total

    def signature(self) -> Signature | None:
        configured = super().signature()
        if configured is not None or not self._inputs:
            return configured
        return Signature(inputs=tuple(self._inputs), outputs=tuple(self._outputs))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": str(self.device), "fixed_batch": self.fixed_batch}

    def predict(self, batch: Batch) -> Arrays:
        inputs = self._pick(batch.inputs)
        rows = batch.rows
        if self.fixed_batch is not None and rows != self.fixed_batch:
            return run_fixed_batches(self._run, inputs, rows, self.fixed_batch)
        return self._run(inputs)

    def _pick(self, inputs: Arrays) -> Arrays:
        picked = {name: named_input(inputs, name, self.input_names) for name in self.input_names}
        for spec in self._inputs:
            spec.check(picked[spec.name])
        return picked

    def _tensor(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        if array.dtype.hasobject:
            raise InvalidInputError(f"the torch runtime takes numeric tensors, got {array.dtype}")
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C")  # torch.from_numpy wants writeable, positive strides
        tensor = torch.from_numpy(array)
        return tensor if self.device.type == "cpu" else tensor.to(self.device, non_blocking=True)

    def _run(self, inputs: Arrays) -> Arrays:
        tensors = [self._tensor(inputs[name]) for name in self.input_names]
        try:
            with torch.inference_mode():
                if self.kind == "exported":
                    args, kwargs = pytree.tree_unflatten(tensors, self.in_spec)
                    result = self.module(*args, **kwargs)
                else:
                    result = self.module(*tensors)
        except Exception as exc:
            message = client_error(exc)
            if message is not None:
                raise InvalidInputError(message) from None
            reason = shape_error(exc)
            if reason is None:
                raise
            names = self.input_names
            details = {"input": names[0]} if len(names) == 1 else {"inputs": list(names)}
            raise InvalidInputError(self._misfit(inputs, reason), **details) from None
        items = output_items(result)
        if self.output_names:
            items = list(zip(self.output_names, (value for _, value in items), strict=False))
        return {name: _numpy(value) for name, value in items}

    def _misfit(self, inputs: Arrays, reason: str) -> str:
        """What a shape or dtype error means to the client: what it sent, and what the model said."""
        sent = ", ".join(
            f"{name!r} of shape {list(inputs[name].shape)} ({datatype_of(inputs[name])})"
            for name in self.input_names
        )
        subject = f"input {sent} does" if len(self.input_names) == 1 else f"inputs {sent} do"
        message = f"{subject} not fit the model: {reason}"
        if self.signature() is None:
            message += (
                "; the model states no signature, so its config can give one (signature = {...} in "
                "model.toml) and wrong shapes are then refused before it runs"
            )
        return message

    def memory_bytes(self) -> int:
        return self.model_bytes

    def unload(self) -> None:
        self.__dict__.pop("module", None)
        self.__dict__.pop("_constants", None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def client_error(exc: BaseException) -> str | None:
    """The message to answer with when ``exc`` means the input was bad, else ``None``.

    Eager and exported code raise ``IndexError``/``ValueError``, and an exported program's failed
    input guard an ``AssertionError``; TorchScript wraps everything in ``RuntimeError`` or
    ``torch.jit.Error`` whose last line names the original error.
    """
    if isinstance(exc, IndexError | ValueError):
        return f"{type(exc).__name__}: {exc}"
    text = str(exc)
    if isinstance(exc, AssertionError) and text.startswith("Guard failed"):
        return f"input does not fit the exported program: {text}"
    if isinstance(exc, RuntimeError | torch.jit.Error):
        last = text.strip().rsplit("\n", 1)[-1]
        if last.startswith(("builtins.ValueError", "builtins.IndexError")) or "index out of range" in last:
            return last.removeprefix("builtins.")
    return None


#: How torch's kernels word a tensor of the wrong shape or dtype (the message's last line).
_SHAPE_OR_DTYPE = re.compile(
    r"shapes cannot be multiplied|size mismatch|must match the size of tensor|is invalid for input of size"
    r"|dimension out of range|expected \d+d .*input|to have \d+ channels|kernel size can't be greater"
    r"|same dtype|scalar type|expected .*dtype|number of dimensions",
    re.IGNORECASE,
)
#: A file path (TorchScript's original-code traceback names them), scrubbed from any message.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}")


def shape_error(exc: BaseException) -> str | None:
    """torch's own reason when ``exc`` is a kernel refusing a tensor's shape or dtype, else ``None``.

    TorchScript wraps the kernel's error in its interpreter traceback (serialized code, then the
    original code with file paths); only the last line, the kernel's message, is kept.
    """
    if not isinstance(exc, RuntimeError | torch.jit.Error):
        return None
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return None
    reason = re.sub(r"^(?:builtins\.)?\w*(?:Error|Exception): ", "", lines[-1])
    if not _SHAPE_OR_DTYPE.search(reason):
        return None
    return _PATH.sub("<path>", reason)


def _numpy(value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    if value.dtype == torch.bfloat16:
        value = value.float()
    return np.asarray(value.detach().cpu().numpy())


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid torch device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but torch sees no CUDA device; set device = 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return device
