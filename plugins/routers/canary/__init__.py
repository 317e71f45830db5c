"""Canary router plugin: a weighted split of a model's versions, sticky on the routing key."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "canary",
        "ladle.plugins.routers.canary.router:CanaryRouter",
        description="weighted split of versions; a routing key keeps its version (stable hash)",
    )
