"""Cascade router plugin: a small model answers; requests it is unsure of go to a large one."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "cascade",
        "ladle.plugins.routers.cascade.router:CascadeRouter",
        description="small model first; scores within the uncertainty band escalate to a large model",
    )
