"""Versions and progressive delivery: the deployment store and controller, rollouts and their
guards, circuit breakers, fallbacks and the response cache, the control API and its auth.

See ``ladle.deployments.controller`` for the two modes (static and managed) and which source of
truth each follows. Names are imported on first use, so importing this package pulls in neither
the controller nor starlette.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import BearerAuth, TokenMiddleware, configured_tokens
    from .controller import DeploymentController, DeploymentFailedError, DeploymentOptions
    from .delivery import Delivery
    from .errors import ConflictError, RateLimitedError, UnknownRequestError
    from .guards import GuardPolicy
    from .resilience import ResiliencePolicy
    from .rollout import RolloutPlan
    from .routes import control_routes
    from .store import DeploymentStore

_HOMES = {
    "BearerAuth": "auth",
    "TokenMiddleware": "auth",
    "configured_tokens": "auth",
    "DeploymentController": "controller",
    "DeploymentFailedError": "controller",
    "DeploymentOptions": "controller",
    "Delivery": "delivery",
    "ConflictError": "errors",
    "RateLimitedError": "errors",
    "UnknownRequestError": "errors",
    "GuardPolicy": "guards",
    "ResiliencePolicy": "resilience",
    "RolloutPlan": "rollout",
    "control_routes": "routes",
    "DeploymentStore": "store",
}

__all__ = [
    "BearerAuth",
    "ConflictError",
    "Delivery",
    "DeploymentController",
    "DeploymentFailedError",
    "DeploymentOptions",
    "DeploymentStore",
    "GuardPolicy",
    "RateLimitedError",
    "ResiliencePolicy",
    "RolloutPlan",
    "TokenMiddleware",
    "UnknownRequestError",
    "configured_tokens",
    "control_routes",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
