"""Shadow router plugin: serve by the weights, mirror a sample to another version and compare."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "shadow",
        "ladle.plugins.routers.shadow.router:ShadowRouter",
        description="mirror a sample of requests to a shadow version; outputs compared, never returned",
    )
