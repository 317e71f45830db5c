"""Dense CPU prediction through XGBoost's C API, with its arguments built once.

``Booster.inplace_predict`` serialises its JSON arguments, checks the input against a dozen frame
libraries and wraps the output through an array-interface object on every call. That is about 50 µs
of Python per call, all of it holding the GIL, which is more than the prediction of a small batch
costs. A served model nearly always sees one kind of input: an aligned, C-contiguous float32 or
float64 matrix in host memory. For that input this module calls the same C function,
``XGBoosterPredictFromDense`` (part of XGBoost's public C API), directly. Every other input takes
``inplace_predict``.

The runtime checks once, at load, that both paths agree on a probe batch. If XGBoost's internals
have moved, it falls back to ``inplace_predict`` for good.
"""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost

__all__ = ["DensePredict", "dense_predictor"]

log = logging.getLogger(__name__)

#: ``predict(matrix)`` -> predictions, or ``None`` when the matrix does not suit the C path.
DensePredict = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any] | None]

_TYPESTR = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}


def dense_predictor(booster: xgboost.Booster, predict_type: str) -> DensePredict | None:
    """A direct caller of ``XGBoosterPredictFromDense`` for ``booster``, or ``None`` when this XGBoost
    build does not expose what it needs."""
    try:
        from xgboost.core import _LIB, XGBoostError

        function = _LIB.XGBoosterPredictFromDense
        last_error = _LIB.XGBGetLastError
    except (ImportError, AttributeError) as exc:
        log.info("xgboost C prediction path unavailable (%s); using inplace_predict", exc)
        return None
    last_error.restype = ctypes.c_char_p
    arguments = json.dumps(
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
    handle = booster.handle
    no_proxy = ctypes.c_void_p()

    def predict(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
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
        status = function(
            handle,
            interface,
            arguments,
            no_proxy,
            ctypes.byref(shape),
            ctypes.byref(dims),
            ctypes.byref(values),
        )
        if status != 0:
            raise XGBoostError(last_error().decode(errors="replace"))
        out_shape = tuple(shape[i] for i in range(dims.value))
        # The C buffer belongs to XGBoost (reused by the next call on this thread): copy it out.
        out = np.empty(out_shape, np.float32)
        ctypes.memmove(out.ctypes.data, values, out.nbytes)
        return out

    return predict
