"""Blue-green router plugin: all traffic on one version, switched atomically."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_routers(register: Register) -> None:
    register(
        "blue-green",
        "ladle.plugins.routers.blue_green.router:BlueGreenRouter",
        description="one live version; a traffic change switches all of it at once",
    )
