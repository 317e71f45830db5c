"""The JAX runtime: a ``jax.export`` artifact, deserialised and compiled once per batch size.

``model.jax`` holds the bytes of ``jax.export.export(jax.jit(f))(*avals).serialize()``: StableHLO
plus its calling convention, no Python code and no pickle. The signature comes from the exported
abstract values (a symbolic dimension becomes ``-1``); names come from dict keys in the function's
arguments and results where it has them, else ``input``/``output`` (``input_0``, ... for several).
"""

from __future__ import annotations

import logging
import os
from typing import Any

# JAX takes 75% of a GPU's memory at its first use by default; in a server that packs several models
# on one device that starves the others, so allocate on demand unless the operator chose otherwise.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # after the allocation setting above
import numpy as np
from jax import export

from ladle import (
    DATATYPES,
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

OPTIONS = ("input_names", "output_names", "pad_batch", "reject_non_finite")

_V2_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def leaf_names(tree: Any, prefix: str) -> list[str]:
    """Names of a pytree's leaves: their dict keys joined by ``.``, else ``prefix`` or ``prefix_i``."""
    placeholder = jax.tree_util.tree_unflatten(tree, list(range(tree.num_leaves)))
    paths = jax.tree_util.tree_flatten_with_path(placeholder)[0]
    names = []
    for index, (path, _) in enumerate(paths):
        keys = [str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey)]
        names.append(".".join(keys) or (prefix if len(paths) == 1 else f"{prefix}_{index}"))
    return names


def _spec(name: str, aval: Any) -> TensorSpec:
    dtype = np.dtype(aval.dtype)
    return TensorSpec(
        name,
        _V2_NAMES.get(dtype, dtype.name.upper()),
        tuple(d if isinstance(d, int) else -1 for d in aval.shape),
    )


def _limit_cpu_threads(threads: int) -> None:
    """XLA's CPU pool is process-wide and read once, when the backend starts: one thread per instance
    is asked for through ``XLA_FLAGS`` unless the user set that flag (later instances cannot change it)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


class JaxRuntime(Runtime):
    """Options:

    - ``input_names`` / ``output_names``: names for the flat inputs and outputs, in order.
    - ``pad_batch`` (default ``true``): pad a dynamic batch to the next power of two rows, so XLA
      compiles a handful of shapes instead of one per batch size.
    - ``reject_non_finite`` (default ``false``): answer rows holding NaN or infinity with
      ``InvalidInputError`` (XLA itself never fails on values).

    ``device`` ``"cuda"``/``"cuda:N"`` needs an artifact exported for the ``cuda`` platform. An
    artifact with a fixed batch dimension is served in slices of that size (``max_batch_rows``).
    """

    name = "jax"

    def load(self) -> None:
        options = self.check_options(OPTIONS)
        self.pad_batch = bool(options.get("pad_batch", True))
        self.reject_non_finite = bool(options.get("reject_non_finite", False))
        _limit_cpu_threads(self.spec.threads)

        path = self.artifact([ARTIFACT], "jax.export artifact")
        blob = path.read_bytes()
        try:
            exported = export.deserialize(bytearray(blob))
        except Exception as exc:
            raise ConfigError(
                f"{path}: not a jax.export artifact: {type(exc).__name__}: {exc}", file=str(path)
            ) from None
        self.device = self._device(exported.platforms)
        if exported.nr_devices != 1:
            raise ConfigError(
                f"{path}: exported for {exported.nr_devices} devices; only single-device artifacts are served"
            )

        self.input_names = list(options.get("input_names") or leaf_names(exported.in_tree, "input"))
        self.output_names = list(options.get("output_names") or leaf_names(exported.out_tree, "output"))
        if len(self.input_names) != len(exported.in_avals) or len(self.output_names) != len(
            exported.out_avals
        ):
            raise ConfigError(
                f"{path}: takes {len(exported.in_avals)} inputs and returns "
                f"{len(exported.out_avals)} outputs; "
                f"got names {self.input_names} and {self.output_names}"
            )
        self._inputs = [_spec(n, a) for n, a in zip(self.input_names, exported.in_avals, strict=True)]
        self._outputs = [_spec(n, a) for n, a in zip(self.output_names, exported.out_avals, strict=True)]
        firsts = {spec.shape[0] if spec.shape else -1 for spec in self._inputs}
        self.fixed_batch: int | None = None
        if len(firsts) == 1 and min(firsts) > 0:
            size = self.fixed_batch = self.max_batch_rows = min(firsts)
            self._inputs = [_free_batch(s, size) for s in self._inputs]
            self._outputs = [_free_batch(s, size) for s in self._outputs]
        self.in_tree = exported.in_tree
        self._call = jax.jit(exported.call)
        self._place = self.device != jax.devices()[0]
        self.model_bytes = len(blob)  # the weights travel inside the StableHLO as constants
        log.info("jax %s on %s (platforms %s)", path, self.device, exported.platforms)

    def _device(self, platforms: tuple[str, ...]) -> Any:
        wanted = "cuda" if self.spec.device.startswith("cuda") else "cpu"
        if wanted not in platforms:
            raise ConfigError(
                f"the artifact was exported for {list(platforms)}, not {wanted!r}; export it with "
                f"platforms=[..., {wanted!r}]"
            )
        try:
            devices = jax.devices(wanted)
        except RuntimeError as exc:
            raise ConfigError(f"device {self.spec.device!r} requested but jax has none: {exc}") from None
        index = int(self.spec.device.partition(":")[2] or 0)
        if index >= len(devices):
            raise ConfigError(
                f"device {self.spec.device!r} requested but jax sees {len(devices)} {wanted} devices"
            )
        return devices[index]

    def signature(self) -> Signature:
        configured = super().signature()
        if configured is not None:
            return configured
        return Signature(inputs=tuple(self._inputs), outputs=tuple(self._outputs))

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "fixed_batch": self.fixed_batch}

    def predict(self, batch: Batch) -> Arrays:
        inputs = self._pick(batch.inputs)
        rows = batch.rows
        if self.fixed_batch is not None:
            if rows != self.fixed_batch:
                return run_fixed_batches(self._run, inputs, rows, self.fixed_batch)
        elif self.pad_batch and rows & (rows - 1):
            return run_fixed_batches(self._run, inputs, rows, 1 << rows.bit_length())
        return self._run(inputs)

    def _pick(self, inputs: Arrays) -> Arrays:
        picked: Arrays = {}
        for spec in self._inputs:
            array = named_input(inputs, spec.name, self.input_names)
            spec.check(array)
            if self.reject_non_finite and array.dtype.kind == "f":
                finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
                if not finite.all():
                    rows = np.flatnonzero(~finite)[:10].tolist()
                    raise InvalidInputError(
                        f"input {spec.name!r}: rows {rows} hold NaN or infinite values", input=spec.name
                    )
            picked[spec.name] = array
        return picked

    def _run(self, inputs: Arrays) -> Arrays:
        leaves = [inputs[name] for name in self.input_names]
        if self._place:
            leaves = [jax.device_put(leaf, self.device) for leaf in leaves]
        args, kwargs = jax.tree_util.tree_unflatten(self.in_tree, leaves)
        try:
            result = self._call(*args, **kwargs)
        except (ValueError, TypeError) as exc:  # shapes or dtypes the exported function does not take
            raise InvalidInputError(f"{type(exc).__name__}: {exc}") from None
        outputs = jax.tree_util.tree_leaves(result)
        return {name: np.asarray(value) for name, value in zip(self.output_names, outputs, strict=True)}

    def memory_bytes(self) -> int:
        return self.model_bytes

    def unload(self) -> None:
        self.__dict__.pop("_call", None)


def _free_batch(spec: TensorSpec, size: int) -> TensorSpec:
    if spec.shape and spec.shape[0] == size:
        return TensorSpec(spec.name, spec.datatype, (-1, *spec.shape[1:]))
    return spec
