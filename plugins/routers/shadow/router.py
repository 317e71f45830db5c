"""The shadow router: primaries by the weights (as the canary router, but drawn for every keyless
request unless ``run`` says otherwise), plus a mirrored copy.

Options:

- ``shadow``: the version that receives copies (default: the newest ready version without traffic);
- ``sample``: the fraction of requests mirrored (default ``1.0``);
- ``queue``: the bound of the mirror queue; copies beyond it are dropped and counted (default 256);
- ``concurrency``: copies in flight at once (default 2);
- ``timeout``: seconds a copy may take before it is abandoned (default 10);
- ``sticky``, ``run``, ``run_ms``: as for the canary router (``run`` defaults to 1).

Copies run at the lowest priority; their outputs (tensors, or generated tokens) are compared with
the primary's and recorded by the core's shadow stage, never returned.
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from ladle import (
    InferenceRequest,
    Route,
    RoutingTable,
    ShadowSettings,
    Target,
    WeightedOptions,
    WeightedRouter,
    WeightedSplit,
)

__all__ = ["ShadowOptions", "ShadowRouter"]


class ShadowOptions(WeightedOptions):
    shadow: str | None = Field(default=None, description="the version that receives copies")
    sample: float = Field(default=1.0, ge=0, le=1, description="fraction of requests mirrored")
    queue: int = Field(default=256, ge=1, description="copies waiting before new ones are dropped")
    concurrency: int = Field(default=2, ge=1, description="copies in flight at once")
    timeout: float = Field(default=10.0, gt=0, description="seconds before a copy is abandoned")


class ShadowRouter(WeightedRouter):
    name: ClassVar[str] = "shadow"
    options_model: ClassVar[type[WeightedOptions]] = ShadowOptions
    default_run: ClassVar[int] = 1
    settings: ShadowOptions

    def __init__(self, options: dict[str, object]) -> None:
        super().__init__(options)
        self.shadow = self.settings.shadow
        self.sample = self.settings.sample
        self._mirrored: tuple[RoutingTable, WeightedSplit] | None = None

    def shadow_settings(self) -> ShadowSettings:
        return ShadowSettings(self.settings.queue, self.settings.concurrency, self.settings.timeout)

    def shadow_version(self, table: RoutingTable) -> str | None:
        """The configured shadow, else the newest ready version that takes no traffic."""
        if self.shadow is not None:
            return self.shadow if self.shadow in table.versions else None
        idle = [v for v in table.versions if table.weights and not table.weights.get(v, 0.0)]
        return idle[-1] if idle else None

    def _mirrored_split(self, table: RoutingTable) -> WeightedSplit:
        cache = self._mirrored
        if cache is None or cache[0] is not table:
            shadow = self.shadow_version(table)
            targets = (Target(table.model, shadow),) if shadow is not None else ()
            shadows = {v: targets for v in table.versions if v != shadow}
            cache = self._mirrored = (table, WeightedSplit(table, shadows))
        return cache[1]

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        split = self.split(table)
        if self.sample and (self.sample >= 1.0 or random.random() < self.sample):
            split = self._mirrored_split(table)
        key = request.routing_key
        if key is not None and self.sticky:
            return split.for_key(key)
        return split.pick_in_runs(self.run, self.run_seconds) if self.run > 1 else split.pick()
