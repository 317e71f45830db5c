"""Fixed scaler plugin: a constant instance count (policy) on threads or worker processes (placement)."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_scaling_policies(register: Register) -> None:
    register(
        "fixed",
        "ladle.plugins.scalers.fixed.scaler:FixedPolicy",
        description="desired instances = the configured `instances`, whatever the load",
    )


@hookimpl
def register_placements(register: Register) -> None:
    register(
        "fixed",
        "ladle.plugins.scalers.fixed.scaler:FixedPlacement",
        description="instances in this host: a thread (default) or a worker process each (`executor`)",
    )
