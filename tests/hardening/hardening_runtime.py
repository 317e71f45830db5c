"""The runtime of the hardening tests: doubles ``x``; marked rows are slow, fail or kill the worker."""

from __future__ import annotations

import os
import time
from typing import Any

from ladle import Arrays, Batch, Runtime, Signature, TensorSpec, hookimpl

#: A first value of SLOW sleeps ``slow_s``; FAIL raises an error naming the artifact's path; EXIT
#: ends the worker process (with ``executor = "process"``).
SLOW, FAIL, EXIT = -3.0, -4.0, -5.0


class DoublingRuntime(Runtime):
    name = "doubling"

    def load(self) -> None:
        self.slow_s = float(self.spec.options.get("slow_s", 1.0))

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        marks = set(x[:, 0].tolist())
        if SLOW in marks:
            time.sleep(self.slow_s)
        if FAIL in marks:
            raise OSError(f"cannot read {os.path.join(self.spec.artifact, 'weights.bin')}")
        if EXIT in marks:
            os._exit(3)
        return {"y": x * 2}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("doubling", DoublingRuntime)
