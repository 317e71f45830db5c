"""The A/B router: a sticky weighted split that records which arm served each request.

Options: ``sticky`` (default ``true``), ``arms``, a table naming versions
(``{control = "v1", treatment = "v2"}``; a version without a name is its own arm), and ``run``
(default 1: every keyless request is drawn on its own, as an experiment wants; see
``ladle.WeightedRouter``). Every answer names its arm (header ``Ladle-Experiment-Arm``, and the
inference log); ``counts`` holds requests routed per arm, shown in the deployment's status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from ladle import InferenceRequest, Route, RoutingTable, WeightedOptions, WeightedRouter

__all__ = ["ABOptions", "ABRouter"]


class ABOptions(WeightedOptions):
    arms: dict[str, str] = Field(default_factory=dict, description="arm name -> version")


class ABRouter(WeightedRouter):
    name: ClassVar[str] = "ab"
    options_model: ClassVar[type[WeightedOptions]] = ABOptions
    #: An experiment draws each keyless request on its own.
    default_run: ClassVar[int] = 1
    settings: ABOptions

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self._arm_of = {version: arm for arm, version in self.settings.arms.items()}
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
