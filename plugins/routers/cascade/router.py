"""The cascade router: a small model answers first; requests it is unsure of go to a large one.

Options:

- ``small`` and ``large``: each a version of this model (``"v1"``) or a version of another model
  (``"other-model:v2"``; ``"other-model:"`` lets that model's own router pick the version);
- ``output``: the output holding the small model's score (default: its first output);
- ``band``: ``[low, high]`` (default ``[0.25, 0.75]``): a row whose score lies within the band is
  unsure, and a request with any unsure row is answered by the large model instead. For an output
  of shape ``[rows, classes]`` the score of a row is its largest class probability.

A request naming a version explicitly skips the cascade; generation requests are never escalated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from ladle import (
    Arrays,
    InferenceRequest,
    PluginOptions,
    Route,
    Router,
    RoutingTable,
    Target,
    as_tuple,
    parse_options,
)

__all__ = ["CascadeOptions", "CascadeRouter"]


class CascadeOptions(PluginOptions):
    small: str = Field(description="'version' or 'model:version' answering first")
    large: str = Field(description="'version' or 'model:version' answering the unsure")
    output: str | None = None
    band: tuple[float, float] = (0.25, 0.75)

    _lists = field_validator("band", mode="before")(as_tuple)

    @field_validator("small", "large")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value or value.count(":") > 1:
            raise ValueError("must be a version ('v1') or 'model:version'")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> CascadeOptions:
        if self.band[0] > self.band[1]:
            raise ValueError(f"band must be [low, high], got {list(self.band)}")
        return self


def _split(value: str) -> tuple[str | None, str]:
    model, _, version = value.rpartition(":")
    return (model or None) if ":" in value else None, version


class CascadeRouter(Router):
    name: ClassVar[str] = "cascade"
    escalates: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.settings = parse_options(CascadeOptions, self.options, "router 'cascade'")
        self._small = _split(self.settings.small)
        self._large = _split(self.settings.large)
        self.low, self.high = self.settings.band
        self.output = self.settings.output
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
