"""The A/B router: a sticky weighted split that records which arm served each request.

Options: ``sticky`` (default ``true``), ``arms``, a table naming versions
(``{control = "v1", treatment = "v2"}``; a version without a name is its own arm), and ``run``
(default 1: every keyless request is drawn on its own, as an experiment wants; see ``split``). The arm of a
served request is ``arm_of(request.version)``; ``counts`` holds requests routed per arm.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ladle.deployments.split import WeightedRouter
from ladle.envelope import InferenceRequest
from ladle.errors import ConfigError
from ladle.routing import Route, RoutingTable

__all__ = ["ABRouter"]


class ABRouter(WeightedRouter):
    name: ClassVar[str] = "ab"
    option_names: ClassVar[frozenset[str]] = frozenset({"sticky", "arms", "run", "run_ms"})
    #: An experiment draws each keyless request on its own.
    default_run: ClassVar[int] = 1

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        arms = self.options.get("arms", {})
        if not isinstance(arms, Mapping) or not all(isinstance(v, str) for v in arms.values()):
            raise ConfigError("router 'ab': arms must map arm names to versions", router="ab")
        self._arm_of = {version: arm for arm, version in arms.items()}
        #: Requests routed per arm since start.
        self.counts: dict[str, int] = {}

    def arm_of(self, version: str) -> str:
        """The arm name of a version (the version itself when it has none)."""
        return self._arm_of.get(version, version)

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        route = super().route(request, table)
        arm = self._arm_of.get(route.primary.version, route.primary.version)
        self.counts[arm] = self.counts.get(arm, 0) + 1
        return route

    def describe(self) -> dict[str, Any]:
        return {"arms": dict(self.counts)}
