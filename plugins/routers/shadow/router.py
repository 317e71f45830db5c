"""The shadow router: primaries by the weights (as the canary router, but with a draw for every
keyless request), plus a mirrored copy.

Options:

- ``shadow``: the version that receives copies (default: the newest ready version without traffic);
- ``sample``: the fraction of requests mirrored (default ``1.0``);
- ``queue``: the bound of the mirror queue; copies beyond it are dropped and counted (default 256);
- ``concurrency``: copies in flight at once (default 2);
- ``timeout``: seconds a copy may take before it is abandoned (default 10);
- ``sticky``: as for the canary router.

Copies run at the lowest priority; their outputs are compared with the primary's and recorded by
the mirror (``ladle.deployments.mirror``), never returned.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from ladle.deployments.split import WeightedRouter, WeightedSplit
from ladle.envelope import InferenceRequest
from ladle.errors import ConfigError
from ladle.routing import Route, RoutingTable, Target

__all__ = ["ShadowRouter"]


class ShadowRouter(WeightedRouter):
    name: ClassVar[str] = "shadow"
    option_names: ClassVar[frozenset[str]] = frozenset(
        {"sticky", "shadow", "sample", "queue", "concurrency", "timeout"}
    )
    #: Tells the serving path that routes may carry shadow copies.
    emits_shadows: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        shadow = self.options.get("shadow")
        if shadow is not None and not isinstance(shadow, str):
            raise ConfigError("router 'shadow': shadow must be a version name", router="shadow")
        self.shadow: str | None = shadow
        sample = self.options.get("sample", 1.0)
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
            raise ConfigError(f"router 'shadow': sample must be within 0..1, got {sample!r}", router="shadow")
        self.sample = float(sample)
        for key, default in (("queue", 256), ("concurrency", 2)):
            value = self.options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"router 'shadow': {key} must be a positive integer", router="shadow")
        timeout = self.options.get("timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(
                "router 'shadow': timeout must be a positive number of seconds", router="shadow"
            )
        self._mirrored: tuple[RoutingTable, WeightedSplit] | None = None

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
        return split.for_key(key) if key is not None and self.sticky else split.pick()
