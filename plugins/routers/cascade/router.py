"""The cascade router: a small model answers first; requests it is unsure of go to a large one.

Options:

- ``small`` and ``large``: each a version of this model (``"v1"``) or a version of another model
  (``"other-model:v2"``; ``"other-model:"`` lets that model's own router pick the version);
- ``output``: the output holding the small model's score (default: its first output);
- ``band``: ``[low, high]`` (default ``[0.25, 0.75]``): a row whose score lies within the band is
  unsure, and a request with any unsure row is answered by the large model instead. For an output
  of shape ``[rows, classes]`` the score of a row is its largest class probability.

A request naming a version explicitly skips the cascade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ladle.deployments.split import check_options
from ladle.envelope import Arrays, InferenceRequest
from ladle.errors import ConfigError
from ladle.routing import Route, Router, RoutingTable, Target

__all__ = ["CascadeRouter"]


def _target(value: Any, key: str) -> tuple[str | None, str]:
    if not isinstance(value, str) or not value or value.count(":") > 1:
        raise ConfigError(
            f"router 'cascade': {key} must be a version ('v1') or 'model:version', got {value!r}",
            router="cascade",
        )
    model, _, version = value.rpartition(":")
    return (model or None) if ":" in value else None, version


class CascadeRouter(Router):
    name: ClassVar[str] = "cascade"
    option_names: ClassVar[frozenset[str]] = frozenset({"small", "large", "output", "band"})

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        check_options(self.name, self.options, self.option_names)
        for key in ("small", "large"):
            if key not in self.options:
                raise ConfigError(f"router 'cascade' needs the option {key!r}", router="cascade")
        self._small = _target(self.options["small"], "small")
        self._large = _target(self.options["large"], "large")
        band = self.options.get("band", [0.25, 0.75])
        if (
            not isinstance(band, list | tuple)
            or len(band) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in band)
            or band[0] > band[1]
        ):
            raise ConfigError(f"router 'cascade': band must be [low, high], got {band!r}", router="cascade")
        self.low, self.high = float(band[0]), float(band[1])
        output = self.options.get("output")
        if output is not None and not isinstance(output, str):
            raise ConfigError("router 'cascade': output must be an output name", router="cascade")
        self.output: str | None = output
        self._routes: tuple[str, Route, Target] | None = None
        #: Requests answered by the small model alone, and requests escalated.
        self.answered = 0
        self.escalated = 0

    def _resolve(self, model: str) -> tuple[str, Route, Target]:
        routes = self._routes
        if routes is None or routes[0] != model:
            small = Target(self._small[0] or model, self._small[1])
            large = Target(self._large[0] or model, self._large[1])
            routes = self._routes = (model, Route(small), large)
        return routes

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        return self._resolve(table.model)[1]

    def unsure(self, outputs: Arrays) -> bool:
        """Whether any row's score lies within the band."""
        array = outputs[self.output] if self.output is not None else next(iter(outputs.values()))
        scores = np.asarray(array, dtype=np.float64)
        if scores.ndim > 1:
            scores = (
                scores.max(axis=-1) if scores.shape[-1] > 1 else scores.reshape(scores.shape[0], -1)[:, 0]
            )
        return bool(np.any((scores >= self.low) & (scores <= self.high)))

    def escalate(self, request: InferenceRequest, outputs: Arrays) -> Target | None:
        """The large target when the small model's answer is unsure, else ``None``."""
        if self.unsure(outputs):
            self.escalated += 1
            return self._resolve(request.model)[2]
        self.answered += 1
        return None

    def describe(self) -> dict[str, Any]:
        return {"answered_by_small": self.answered, "escalated": self.escalated}
