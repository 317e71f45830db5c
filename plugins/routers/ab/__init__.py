"""A/B router plugin: a sticky weighted split that counts the requests each arm served."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "ab",
        "ladle.plugins.routers.ab.router:ABRouter",
        description="A/B test: sticky weighted split, requests counted per arm",
    )
