"""The single router: every request goes to the latest version in the routing table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ladle import (
    InferenceRequest,
    ModelNotReadyError,
    PluginOptions,
    Route,
    Router,
    RoutingTable,
    Target,
    parse_options,
)

__all__ = ["SingleRouter"]


class SingleRouter(Router):
    """Routes to ``table.latest`` (the only version, or the newest); takes no options.

    The route depends on the table alone (``static``), so the core asks once per table.
    """

    static: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        parse_options(PluginOptions, self.options, "router 'single'")

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        if not table.versions:
            raise ModelNotReadyError(
                f"model {table.model!r} has no version that takes traffic", model=table.model
            )
        return Route(Target(table.model, table.latest))
