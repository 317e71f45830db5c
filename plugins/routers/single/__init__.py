"""Single router plugin: every request goes to the latest version that can take traffic."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "single",
        "ladle.plugins.routers.single.router:SingleRouter",
        description="all traffic to the latest version in the routing table",
    )
