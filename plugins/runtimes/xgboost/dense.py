"""Dense CPU prediction through XGBoost's C API, with its arguments built once.

``Booster.inplace_predict`` serialises its JSON arguments, checks the input against a dozen frame
libraries and wraps the output through an array-interface object on every call. That is about 50 µs
of Python per call, all of it holding the GIL, which is more than the prediction of a small batch
costs. A served model nearly always sees one kind of input: an aligned, C-contiguous float32 or
float64 matrix in host memory. For that input this module calls the same C function,
``XGBoosterPredictFromDense`` (part of XGBoost's public C API), directly. Every other input takes
``inplace_predict``.

The call also reuses one proxy DMatrix. Without one, XGBoost builds a fresh proxy per call, and
with it a context that reads the cgroup CPU quota from ``/sys/fs/cgroup``: a handful of system
calls per prediction, a quarter of the cost of predicting one row here.

The runtime checks once, at load, that both paths agree on a probe batch. If XGBoost's internals
have moved, it falls back to ``inplace_predict`` for good.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
from typing import Any

import numpy as np
import xgboost

__all__ = ["DensePredictor"]

log = logging.getLogger(__name__)

_TYPESTR = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}


class DensePredictor:
    """Calls ``XGBoosterPredictFromDense`` for one booster; ``close`` frees the proxy it holds."""

    def __init__(self, booster: xgboost.Booster, predict_type: str, library: Any) -> None:
        self._booster = booster  # keeps the handle alive
        self._handle = booster.handle
        self._library = library
        self._function = library.XGBoosterPredictFromDense
        self._arguments = json.dumps(
            {
                "type": 1 if predict_type == "margin" else 0,
                "training": False,
                "iteration_begin": 0,
                "iteration_end": 0,
                "missing": float("nan"),
                "strict_shape": False,
                "cache_id": 0,
            }
        ).encode()
        self._proxy = ctypes.c_void_p()
        self._check(library.XGProxyDMatrixCreate(ctypes.byref(self._proxy)))
        # The proxy holds the array of the call in progress: one call at a time may use it.
        self._proxy_free = threading.Lock()

    @classmethod
    def create(cls, booster: xgboost.Booster, predict_type: str) -> DensePredictor | None:
        """A predictor for ``booster``, or ``None`` when this XGBoost build lacks what it needs."""
        try:
            from xgboost.core import _LIB

            _LIB.XGBGetLastError.restype = ctypes.c_char_p
            return cls(booster, predict_type, _LIB)
        except (ImportError, AttributeError, xgboost.core.XGBoostError) as exc:
            log.info("xgboost C prediction path unavailable (%s); using inplace_predict", exc)
            return None

    def _check(self, status: int) -> None:
        if status != 0:
            message = self._library.XGBGetLastError()
            raise xgboost.core.XGBoostError(message.decode(errors="replace") if message else "unknown error")

    def __call__(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
        """Predictions for ``matrix``, or ``None`` when it does not suit this path."""
        typestr = _TYPESTR.get(matrix.dtype)
        flags = matrix.flags
        if typestr is None or matrix.ndim != 2 or not (flags.c_contiguous and flags.aligned):
            return None
        rows, columns = matrix.shape
        interface = (
            f'{{"data":[{matrix.ctypes.data},true],"shape":[{rows},{columns}],'
            f'"typestr":"{typestr}","version":3}}'
        ).encode()
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        values = ctypes.POINTER(ctypes.c_float)()
        own_proxy = self._proxy_free.acquire(blocking=False)
        try:
            status = self._function(
                self._handle,
                interface,
                self._arguments,
                self._proxy if own_proxy else ctypes.c_void_p(),  # a concurrent call gets XGBoost's own
                ctypes.byref(shape),
                ctypes.byref(dims),
                ctypes.byref(values),
            )
        finally:
            if own_proxy:
                self._proxy_free.release()
        self._check(status)
        out_shape = tuple(shape[i] for i in range(dims.value))
        # The C buffer belongs to XGBoost (reused by the next call on this thread): copy it out.
        out = np.empty(out_shape, np.float32)
        ctypes.memmove(out.ctypes.data, values, out.nbytes)
        return out

    def close(self) -> None:
        """Free the proxy DMatrix (idempotent)."""
        if self._proxy.value:
            self._library.XGDMatrixFree(self._proxy)
            self._proxy = ctypes.c_void_p()
