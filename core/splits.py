"""Weighted traffic splits with sticky assignment, shared by the splitting routers.

A routing key is hashed with BLAKE2b (not Python's salted ``hash``) to a bucket in ``[0, 10000)``;
each version owns a contiguous range of buckets laid out in a fixed order (the table's natural
version order). A key therefore keeps its version across requests, processes and restarts, and a
weight change moves only the keys whose buckets change owner: moving 10% of the traffic from one
version to its neighbour moves 10% of the keys.

Requests without a key are drawn at random in proportion to the weights, one draw per *run*: the
version drawn takes the next ``run`` keyless requests, or those that arrive within ``run_ms``
milliseconds, whichever ends first (256 and 20 ms by default). Under load a version's keyless
requests then arrive together and fill whole batches, and the server switches between the versions'
models (their caches, their runtime threads) once per run rather than once per batch: a 10% canary
then costs a few percent of CPU instead of a small extra batch next to nearly every batch of the
stable version. A run stays short against any rollout window, and when traffic is light it holds a
request or two, close to an independent draw per request. ``run = 1`` draws for every request.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any, ClassVar

from pydantic import Field

from .envelope import InferenceRequest
from .errors import InvalidRequestError, ModelNotReadyError
from .options import PluginOptions, parse_options
from .routing import Route, Router, RoutingTable, Target

__all__ = [
    "BUCKETS",
    "WeightedOptions",
    "WeightedRouter",
    "WeightedSplit",
    "normalise_weights",
    "stable_bucket",
]

#: Buckets per split: weights resolve to 0.01% of the traffic.
BUCKETS = 10_000


def stable_bucket(key: str) -> int:
    """The bucket of a routing key in ``[0, BUCKETS)``; the same in every process and release."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") % BUCKETS


def normalise_weights(weights: Mapping[str, float], known: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Check a traffic split (percent per version, summing to 100) and return it as floats.

    Raises ``InvalidRequestError`` naming the problem: an unknown version, a negative or
    non-numeric weight, or a sum other than 100.
    """
    if not weights:
        raise InvalidRequestError("a traffic split needs at least one version")
    result: dict[str, float] = {}
    for version, weight in weights.items():
        if version not in known:
            raise InvalidRequestError(
                f"unknown version {version!r}; loaded: {sorted(known)}",
                version=version,
                available=sorted(known),
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
            raise InvalidRequestError(
                f"weight of {version!r} must be a number from 0 to 100, got {weight!r}", version=version
            )
        result[version] = float(weight)
    total = sum(result.values())
    if abs(total - 100.0) > 1e-6:
        raise InvalidRequestError(f"traffic weights must sum to 100, got {total:g}", weights=result)
    return result


class WeightedSplit:
    """A routing table resolved into bucket ranges and prebuilt routes (no allocation per request)."""

    __slots__ = ("_bounds", "_routes", "_run_ends", "_run_left", "_run_route", "versions")

    def __init__(self, table: RoutingTable, shadows: Mapping[str, tuple[Target, ...]] | None = None) -> None:
        versions = table.versions
        weights = {v: float(table.weights.get(v, 0.0)) for v in versions} if table.weights else {}
        total = sum(weights.values())
        if total <= 0:
            # No weights (or only for versions that are not ready): everything goes to the latest.
            weights = {versions[-1]: 1.0} if versions else {}
            total = 1.0
        self.versions: tuple[str, ...] = tuple(v for v in versions if weights.get(v, 0.0) > 0)
        bounds: list[int] = []
        cumulative = 0.0
        for version in self.versions:
            cumulative += weights[version]
            bounds.append(round(cumulative / total * BUCKETS))
        if bounds:
            bounds[-1] = BUCKETS
        self._bounds = bounds
        shadows = shadows or {}
        self._routes = [Route(Target(table.model, v), shadows.get(v, ())) for v in self.versions]
        self._run_route: Route | None = None
        self._run_left = 0
        self._run_ends = 0.0

    def __bool__(self) -> bool:
        return bool(self._routes)

    def share(self, version: str) -> float:
        """The fraction of buckets ``version`` owns."""
        if version not in self.versions:
            return 0.0
        index = self.versions.index(version)
        low = self._bounds[index - 1] if index else 0
        return (self._bounds[index] - low) / BUCKETS

    def for_bucket(self, bucket: int) -> Route:
        return self._routes[bisect_right(self._bounds, bucket)]

    def for_key(self, key: str) -> Route:
        """The route of a routing key (sticky): ``stable_bucket`` inline, as this runs per request."""
        bucket = int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") % BUCKETS
        return self._routes[bisect_right(self._bounds, bucket)]

    def pick(self) -> Route:
        """A route drawn at random in proportion to the weights."""
        if len(self._routes) == 1:
            return self._routes[0]
        return self._routes[bisect_right(self._bounds, int(random.random() * BUCKETS))]

    def pick_in_runs(self, length: int, seconds: float) -> Route:
        """``pick``, drawn once per run of up to ``length`` requests within ``seconds``."""
        now = time.monotonic()
        route = self._run_route
        if route is not None and self._run_left > 0 and now < self._run_ends:
            self._run_left -= 1
            return route
        route = self._run_route = self.pick()
        self._run_left = length - 1
        self._run_ends = now + seconds
        return route

    def route(self, key: str | None) -> Route:
        return self.pick() if key is None else self.for_key(key)


class WeightedOptions(PluginOptions):
    """Options of every weighted router (see the module docstring for ``run`` and ``run_ms``)."""

    sticky: bool = True
    run: int | None = Field(default=None, ge=1, description="keyless requests per draw")
    run_ms: float = Field(default=20.0, gt=0, description="milliseconds a run may last")


class WeightedRouter(Router):
    """Routes by the table's weights: sticky on ``request.routing_key`` unless ``sticky = false``,
    random in proportion to the weights, in runs (``run``, ``run_ms``), for requests without a key.

    Subclasses extend ``options_model`` (a ``WeightedOptions`` subclass) with their own options;
    the parsed options are ``self.settings``. The resolved split is cached per table object; tables
    are immutable and swapped whole, so an identity check is enough to notice a traffic change.
    """

    name: ClassVar[str] = "weighted"
    splits_weights: ClassVar[bool] = True
    options_model: ClassVar[type[WeightedOptions]] = WeightedOptions
    #: Keyless requests per draw unless configured.
    default_run: ClassVar[int] = 256

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.settings = parse_options(self.options_model, self.options, f"router {self.name!r}")
        self.sticky = self.settings.sticky
        self.run = self.settings.run if self.settings.run is not None else self.default_run
        self.run_seconds = self.settings.run_ms / 1000.0
        self._cache: tuple[RoutingTable, WeightedSplit] | None = None

    def build(self, table: RoutingTable) -> WeightedSplit:
        """Resolve a table (called once per table)."""
        return WeightedSplit(table)

    def split(self, table: RoutingTable) -> WeightedSplit:
        cache = self._cache
        if cache is None or cache[0] is not table:
            split = self.build(table)
            if not split:
                raise ModelNotReadyError(f"model {table.model!r} has no ready version", model=table.model)
            cache = self._cache = (table, split)
        return cache[1]

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        cache = self._cache
        split = cache[1] if cache is not None and cache[0] is table else self.split(table)
        key = request.routing_key
        if key is not None and self.sticky:
            return split.for_key(key)
        return split.pick_in_runs(self.run, self.run_seconds) if self.run > 1 else split.pick()
