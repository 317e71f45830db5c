"""Suite-wide setup: the suite is hermetic against plugins installed beside ladle, and every test
that needs Ray shares one local Ray.

Only the ``ladle`` distribution's plugins load (``LADLE_PLUGIN_DISTRIBUTIONS``), in this process
and in every server or worker process a test starts; tests that install a third-party plugin on
purpose run their commands with ``offline_venv.open_environment()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ladle.plugin_host import DISTRIBUTIONS_VARIABLE

os.environ[DISTRIBUTIONS_VARIABLE] = "ladle"

#: Ray's workers import the probe runtime of ``ray/ray_probe.py`` by name, so that directory goes on
#: their ``PYTHONPATH`` through the job's runtime environment.
RAY_PROBES = Path(__file__).resolve().parent / "ray"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for the whole test session (2 CPUs, no dashboard, loopback only)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray", reason="the ray placement needs ray: pip install 'ladle[ray]'")
    path = os.pathsep.join(p for p in (str(RAY_PROBES), os.environ.get("PYTHONPATH", "")) if p)
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
