"""One local Ray for the whole test session (2 CPUs, no dashboard, loopback only), shut down at the end.

Ray's workers import the probe runtime of ``ray_probe`` by name, so this directory goes on their
``PYTHONPATH`` through the job's runtime environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback addresses only
    ray = pytest.importorskip("ray", reason="the ray placement needs ray: pip install 'ladle[ray]'")
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
