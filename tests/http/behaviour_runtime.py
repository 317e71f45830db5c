"""An in-test runtime whose inputs choose its behaviour: echo, invalid input, crash, slow."""

from __future__ import annotations

import time
from typing import Any

from ladle import Arrays, Batch, InvalidInputError, Runtime, Signature, TensorSpec, hookimpl

INVALID, CRASH, SLOW = -1.0, -2.0, -3.0


class BehaviourRuntime(Runtime):
    """Doubles its input; a first value of -1 is invalid input, -2 crashes, -3 sleeps ``slow_s``."""

    name = "behaviour"

    def load(self) -> None:
        self.slow_s = float(self.spec.options.get("slow_s", 0.5))

    def signature(self) -> Signature:
        return Signature(
            (TensorSpec("x", "FP32", (-1, 2)),),
            (TensorSpec("y", "FP32", (-1, 2)),),
        )

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        marks = set(x[:, 0].tolist())
        if INVALID in marks:
            raise InvalidInputError("a row is marked invalid", input="x")
        if CRASH in marks:
            raise RuntimeError("boom")
        if SLOW in marks:
            time.sleep(self.slow_s)
        return {"y": x * 2}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("behaviour", BehaviourRuntime)
