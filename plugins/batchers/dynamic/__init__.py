"""Dynamic batcher plugin: batches what queues while instances are busy; a lone request never waits."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_batchers(register: Register) -> None:
    register(
        "dynamic",
        "ladle.plugins.batchers.dynamic.batcher:DynamicBatcher",
        description="adaptive batching: rows-capped, shape-grouped, priority lanes, deadlines, bounded queue",
    )
