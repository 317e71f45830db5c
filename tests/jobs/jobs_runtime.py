"""A runtime for job tests: doubles ``x``; its options make it slow, refuse a marked row, and log
every row it scores (the first column) to a file, so a test can tell what was scored twice."""

from __future__ import annotations

import os
import time
from typing import Any

from ladle import Arrays, Batch, InvalidInputError, Runtime, Signature, TensorSpec, hookimpl

#: A first column of this value is refused as invalid input.
REFUSED = -1.0


class DoublingRuntime(Runtime):
    """Options: ``delay`` (seconds per batch), ``log`` (a file each scored row's first value is
    appended to), ``batches`` (a file each batch's size and first values are appended to)."""

    name = "doubling"

    def load(self) -> None:
        self.delay = float(self.spec.options.get("delay", 0.0))
        self.log = self.spec.options.get("log")
        self.batches = self.spec.options.get("batches")

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        first = x[:, 0].tolist()
        if REFUSED in first:
            raise InvalidInputError("a row is marked as refused", input="x")
        if x.any():  # warm-up's zeros are not logged
            if self.batches:
                with open(self.batches, "a") as f:
                    f.write(f"{time.monotonic()} {len(first)} {' '.join(repr(v) for v in first)}\n")
            if self.delay:
                time.sleep(self.delay)
            if self.log:
                with open(self.log, "a") as f:
                    f.write("".join(f"{v!r}\n" for v in first))
                    f.flush()
                    os.fsync(f.fileno())
        return {"y": x * 2}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("doubling", DoublingRuntime)
