"""The runtime contract: what a runtime plugin author writes.

An author subclasses ``Runtime`` and writes ``load`` and ``predict`` (a batch in, a batch out).
Queueing, concatenation, splitting, per-item error isolation, deadlines and threading belong to
the core. A runtime is always rebuilt from a ``RuntimeSpec``, so the same runtime can run in a
thread, a worker process, a Ray actor or a pod.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .envelope import Arrays, Batch
from .errors import ConfigError, InvalidInputError
from .tensors import Signature, numpy_dtype

__all__ = ["InstanceState", "Runtime", "RuntimeSpec", "named_input", "process_rss_bytes", "run_fixed_batches"]


class InstanceState(StrEnum):
    """The one lifecycle every instance follows."""

    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything needed to rebuild a runtime anywhere; plain data, so it pickles and serialises.

    ``artifact`` is the version directory (or a file in it); ``device`` is a logical device such as
    ``"cpu"`` or ``"cuda:0"``; ``threads`` is the thread budget the core grants this instance;
    ``trust_code`` opts in to executing code or unpickling objects from the model directory.
    """

    plugin: str
    artifact: str
    model: str = ""
    version: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    trust_code: bool = False
    signature: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeSpec:
        return cls(**dict(data))

    @property
    def path(self) -> Path:
        return Path(self.artifact)


class Runtime:
    """Base class of runtime plugins.

    Subclasses set ``name`` and override ``load`` and ``predict``; they may override ``signature``
    (when the artifact carries one), ``warmup`` and ``unload``. After ``load`` a runtime may set
    ``max_batch_rows`` to cap a batch (``1`` for a program exported with a static batch dimension).
    What a runtime can do whatever its artifact (pad ragged inputs, its preferred batcher, stepping)
    is declared when its plugin registers it (``ladle.RuntimeCapabilities``), so the front process
    knows without importing the runtime.
    """

    name: ClassVar[str] = "runtime"

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec
        self.max_batch_rows: int | None = None
        self._signature: Signature | None = Signature.from_dict(spec.signature) if spec.signature else None

    def check_options(self, known: Iterable[str]) -> Mapping[str, Any]:
        """The spec's options, after refusing (``ConfigError``) any name not in ``known``."""
        options = self.spec.options
        unknown = sorted(set(options).difference(known))
        if unknown:
            raise ConfigError(
                f"options of model {self.spec.model!r}: unknown {self.name} runtime options {unknown}; "
                f"known: {sorted(known)}",
                key="options",
                unknown=unknown,
            )
        return options

    def artifact(self, names: Sequence[str], what: str) -> Path:
        """The artifact file: the spec's path itself, or the first of ``names`` in its directory."""
        path = self.spec.path
        if path.is_dir():
            path = next((path / n for n in names if (path / n).is_file()), path / names[0])
        if not path.is_file():
            raise ConfigError(f"{path}: no {what}", file=str(path))
        return path

    def load(self) -> None:
        """Load the artifact. Called once, in the thread or process that will run ``predict``."""
        raise NotImplementedError

    def predict(self, batch: Batch) -> Arrays:
        """Run one batch: every output's first dimension equals ``batch.rows``, in input order.

        Raise ``InvalidInputError`` for inputs the model cannot take; the core then isolates the
        offending item and the other items of the batch still get their answers.
        """
        raise NotImplementedError

    def signature(self) -> Signature | None:
        """The model's signature: from config when given, else whatever the artifact carries."""
        return self._signature

    def warmup(self) -> None:
        """Run one synthetic batch built from the signature (no-op without one)."""
        sig = self.signature()
        if sig is None or not sig.inputs:
            return
        inputs: Arrays = {}
        for spec in sig.inputs:
            if spec.datatype == "BYTES":
                return
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            if self.max_batch_rows == 1 and shape:
                shape = (1, *shape[1:])
            inputs[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
        self.predict(Batch.of(inputs))

    def describe(self) -> dict[str, Any]:
        """What this runtime actually runs on (device, active providers...), for status listings."""
        return {}

    def memory_bytes(self) -> int | None:
        """Memory this runtime holds after load and warm-up, measured by the runtime; ``None`` if unknown."""
        return None

    def unload(self) -> None:
        """Release what ``load`` took."""


def process_rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def named_input(inputs: Arrays, name: str, names: Sequence[str]) -> np.ndarray[Any, Any]:
    """The array of input ``name`` among a model's ``names``; a model with one input also takes a
    request's only array whatever it is called. Raises ``InvalidInputError`` naming what is missing."""
    array = inputs.get(name)
    if array is None:
        if len(names) != 1 or len(inputs) != 1:
            raise InvalidInputError(f"missing input {name!r}; the model takes {list(names)}", input=name)
        array = next(iter(inputs.values()))
    return array


def run_fixed_batches(run: Callable[[Arrays], Arrays], inputs: Arrays, rows: int, size: int) -> Arrays:
    """Run ``run`` on slices of exactly ``size`` rows (the last padded by repeating its last row)
    and join the outputs, trimmed back to ``rows``: how a graph with a fixed batch serves any batch."""
    parts: list[Arrays] = []
    for start in range(0, rows, size):
        real = min(size, rows - start)
        chunk = {name: array[start : start + real] for name, array in inputs.items()}
        if real < size:
            chunk = {n: np.concatenate([a, np.repeat(a[-1:], size - real, axis=0)]) for n, a in chunk.items()}
        parts.append({name: value[:real] for name, value in run(chunk).items()})
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
