"""The router contract: pick the target version of a request, and optionally shadow copies.

A router reads an immutable ``RoutingTable`` that the controller swaps atomically when traffic
changes; routing is therefore lock-free on the data path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .envelope import InferenceRequest

__all__ = ["Route", "Router", "RoutingTable", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    version: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: one primary target, plus shadow copies whose outputs are never returned."""

    primary: Target
    shadows: tuple[Target, ...] = ()


@dataclass(frozen=True)
class RoutingTable:
    """The versions of a model that can take traffic, with their traffic weights (percent)."""

    model: str
    versions: tuple[str, ...]
    weights: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def latest(self) -> str:
        return self.versions[-1]


class Router(ABC):
    """Base class of router plugins; one router per model."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @abstractmethod
    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        """Choose targets for a request whose ``version`` is ``None`` (an explicit version skips routing)."""
