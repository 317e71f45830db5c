"""The blue-green router: every request goes to the one live version.

The standby version is loaded and warmed with no traffic; a switch (``{"green": 100}``) replaces the
routing table in one assignment, so no request sees a mixture. Splits are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from ladle import InferenceRequest, InvalidRequestError, Route, RoutingTable, WeightedRouter

__all__ = ["BlueGreenRouter"]


class BlueGreenRouter(WeightedRouter):
    name: ClassVar[str] = "blue-green"

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        return self.split(table).pick()

    def check_weights(self, weights: Mapping[str, float]) -> None:
        live = [version for version, weight in weights.items() if weight > 0]
        if len(live) != 1:
            raise InvalidRequestError(
                "the blue-green router switches all traffic to one version; give it 100",
                weights=dict(weights),
            )
