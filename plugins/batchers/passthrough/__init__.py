"""Passthrough batcher plugin: every request is its own batch, on the least-loaded instance."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_batchers(register: Register) -> None:
    register(
        "passthrough",
        "ladle.plugins.batchers.passthrough.batcher:PassthroughBatcher",
        description="one request per batch on the least-loaded ready instance; FIFO bounded queue when busy",
    )
