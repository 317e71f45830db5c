"""In-test runtimes for the gRPC tests: an echo of any tensors, and one whose inputs choose its behaviour."""

from __future__ import annotations

import threading
import time
from typing import Any

from ladle import Arrays, Batch, InvalidInputError, Runtime, Signature, TensorSpec, hookimpl

INVALID, CRASH, SLOW = -1.0, -2.0, -3.0
#: First values of the rows the behaviour runtime ran, in order (read by the cancellation tests).
SEEN: list[float] = []
_lock = threading.Lock()


class EchoRuntime(Runtime):
    """Returns every input as an output of the same name (no signature: any names and datatypes)."""

    name = "grpc_echo"

    def load(self) -> None:
        pass

    def signature(self) -> Signature | None:
        return None

    def warmup(self) -> None:
        pass

    def predict(self, batch: Batch) -> Arrays:
        return dict(batch.inputs)


class BehaviourRuntime(Runtime):
    """Doubles ``x``; a first value of -1 is invalid input, -2 crashes, -3 sleeps ``slow_s``."""

    name = "grpc_behaviour"

    def load(self) -> None:
        self.slow_s = float(self.spec.options.get("slow_s", 0.5))

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def warmup(self) -> None:
        pass

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        marks = x[:, 0].tolist()
        with _lock:
            SEEN.extend(marks)
        if INVALID in marks:
            raise InvalidInputError("a row is marked invalid", input="x")
        if CRASH in marks:
            raise RuntimeError("boom")
        if SLOW in marks:
            time.sleep(self.slow_s)
        return {"y": x * 2}


class SlowLoadRuntime(EchoRuntime):
    """An echo that takes ``load_s`` seconds to load (a server that is live but not ready)."""

    name = "grpc_slow_load"

    def load(self) -> None:
        time.sleep(float(self.spec.options.get("load_s", 2.0)))


@hookimpl
def register_runtimes(register: Any) -> None:
    register("grpc_echo", EchoRuntime)
    register("grpc_behaviour", BehaviourRuntime)
    register("grpc_slow_load", SlowLoadRuntime)
