"""JAX runtime plugin: serves a function serialised with ``jax.export`` (``model.jax``)."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

ARTIFACT = "model.jax"


def detect(directory: Path) -> bool:
    """A ``model.jax`` file: the bytes of ``jax.export.export(...)(...).serialize()``."""
    return (directory / ARTIFACT).is_file()


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "jax",
        "ladle.plugins.runtimes.jax.runtime:JaxRuntime",
        requires=["jax", "flatbuffers"],
        extra="jax",
        detect=detect,
        description="jax.export artifact (StableHLO, no Python code); signature from its abstract values",
    )
