"""The single router: every request goes to the latest version in the routing table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ladle.config import validation_error
from ladle.envelope import InferenceRequest
from ladle.errors import ModelNotReadyError
from ladle.routing import Route, Router, RoutingTable, Target

__all__ = ["SingleRouter"]


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SingleRouter(Router):
    """Routes to ``table.latest`` (the only version, or the newest); takes no options.

    Tables are immutable and swapped whole, so the route is computed once per table and reused.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        try:
            _NoOptions.model_validate(self.options)
        except ValidationError as exc:
            raise validation_error("router 'single' options", exc) from None
        self._cached: tuple[RoutingTable, Route] | None = None

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        cached = self._cached
        if cached is not None and cached[0] is table:
            return cached[1]
        if not table.versions:
            raise ModelNotReadyError(
                f"model {table.model!r} has no version that takes traffic", model=table.model
            )
        route = Route(Target(table.model, table.latest))
        self._cached = (table, route)
        return route
