"""The router contract: pick the target version of a request, and optionally shadow copies.

A router reads an immutable ``RoutingTable`` that the controller swaps atomically when traffic
changes; routing is therefore lock-free on the data path. What a router can do is declared on the
class (``static``, ``splits_weights``, ``escalates``) or answered by a method with a default
(``shadow_settings``, ``check_weights``, ``escalate``, ``arm_of``, ``describe``); the core reads
these declarations and never probes a router for attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .envelope import InferenceRequest

if TYPE_CHECKING:
    from .envelope import Arrays

__all__ = ["Route", "Router", "RoutingTable", "ShadowSettings", "Target"]


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


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """How shadow copies travel: a bounded queue, a few at a time, each abandoned after ``timeout``."""

    queue: int = 256
    concurrency: int = 2
    timeout: float = 10.0


class Router(ABC):
    """Base class of router plugins; one router per model.

    Declarations a subclass may change:

    - ``static``: the route depends on the routing table alone, never on the request; the core then
      asks ``route`` once per table and reuses the answer;
    - ``splits_weights``: the router serves a weighted split of several versions (the table's
      weights); when traffic is split on a model whose router does not, the controller switches the
      model to its ``split_router``;
    - ``escalates``: answers may be escalated to another target (``escalate``), as a cascade does.
    """

    static: ClassVar[bool] = False
    splits_weights: ClassVar[bool] = False
    escalates: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @abstractmethod
    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        """Choose targets for a request whose ``version`` is ``None`` (an explicit version skips routing)."""

    def shadow_settings(self) -> ShadowSettings | None:
        """How this router's shadow copies travel; ``None`` (the default) when routes carry none."""
        return None

    def check_weights(self, weights: Mapping[str, float]) -> None:
        """Refuse (``InvalidRequestError``) a traffic split this router cannot serve; any is fine here."""
        return None

    def escalate(self, request: InferenceRequest, outputs: Arrays) -> Target | None:
        """Where to send a request whose first answer is not good enough (``None``: keep it)."""
        return None

    def arm_of(self, version: str) -> str | None:
        """The experiment arm a version serves as, reported with each answer (``None``: no arm)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Figures for status listings (requests per arm, escalations...)."""
        return {}
