"""Thread budgets. OpenMP, BLAS, torch intra-op and onnxruntime pools are process-wide, so the core
decides them once per process, before any framework is imported, and hands each runtime its share
through ``RuntimeSpec.threads``. On small batches one thread per instance is usually fastest
(XGBoost on 2 cores is about 2x faster with one thread than with its default)."""

from __future__ import annotations

import os

__all__ = ["THREAD_VARIABLES", "apply_process_budget", "available_cpus"]

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply_process_budget(threads: int) -> dict[str, str]:
    """Set the process-wide thread variables that the user has not set; returns what was set.

    Must run before numpy's BLAS or any ML framework starts its pools to take full effect.
    """
    applied: dict[str, str] = {}
    value = str(max(1, threads))
    for name in THREAD_VARIABLES:
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied
