"""A runtime for the Ray tests: doubles ``x``, reports its process, fails or sleeps on request.

A row whose first value is ``-1`` fails its item; ``parameters["sleep"]`` sleeps that many seconds;
the option ``fail_load`` makes loading fail. Output ``mark`` is ``$PROBE_MARK`` (0 when unset).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ladle import Arrays, Batch, Runtime, hookimpl

FAIL = -1.0


class ProbeRuntime(Runtime):
    name = "probe"

    def load(self) -> None:
        if self.spec.options.get("fail_load"):
            raise RuntimeError("the probe was asked not to load")
        self.mark = float(os.environ.get("PROBE_MARK", "0"))

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        if np.any(x[:, 0] == FAIL):
            raise ValueError("a row asked to fail")
        for item in batch.items:
            time.sleep(float(item.parameters.get("sleep", 0)))
        rows = batch.rows
        return {
            "y": x * 2,
            "pid": np.full(rows, os.getpid(), dtype=np.int64),
            "mark": np.full(rows, self.mark),
        }


@hookimpl
def register_runtimes(register: Any) -> None:
    register("probe", ProbeRuntime)
