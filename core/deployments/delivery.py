"""Progressive delivery of one model: the delivery stages its admission path runs.

A ``Delivery`` holds a model's resilience policy (breakers, fallbacks, cache), its shadow mirror
and, while a rollout watches the model, the per-version samples. ``stages()`` composes what is
needed now, outermost first, from the policy, the router's declared capabilities and the rollout;
the controller installs the result on the endpoint (``ModelEndpoint.set_stages``). A model that
needs none runs the plain path and pays nothing for these features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..admission import Stage
from ..errors import LadleError
from ..routing import Router, Target
from .guards import VersionSamples
from .mirror import ShadowMirror
from .resilience import CircuitBreaker, ResiliencePolicy, ResponseCache
from .stages import BreakerStage, CacheStage, CascadeStage, FallbackStage, SamplesStage, ShadowStage

if TYPE_CHECKING:
    from ..serving import ModelEndpoint, VersionEndpoint

__all__ = ["Delivery"]


class Delivery:
    """Circuit breakers, fallbacks, the response cache, the shadow mirror and rollout samples of one
    model, as delivery stages."""

    def __init__(self, endpoint: ModelEndpoint, lookup: Callable[[str], ModelEndpoint]) -> None:
        self.model = endpoint.name
        self._endpoint = endpoint
        self._lookup = lookup
        self.policy = ResiliencePolicy()
        self.cache: ResponseCache | None = None
        self._fallback: FallbackStage | None = None
        self._breakers: BreakerStage | None = None
        self._samples: SamplesStage | None = None
        self.mirror: ShadowMirror | None = None
        self.score_output: str | None = None
        self._router: Router | None = None
        self._cascade: CascadeStage | None = None

    # configuration (control path) ------------------------------------------------------------

    def configure(self, policy: ResiliencePolicy) -> None:
        """Apply a resilience policy (breakers, fallbacks, cache); replaces the previous one."""
        self.policy = policy
        if policy.cache is None:
            self.cache = None
        elif self.cache is None or self.cache.policy != policy.cache:
            self.cache = ResponseCache(policy.cache)
        self._breakers = BreakerStage(self.model, policy.circuit_breaker) if policy.circuit_breaker else None
        self._fallback = (
            FallbackStage(self.model, tuple(policy.fallback), self.cache) if policy.fallback else None
        )

    def watch(self, versions: list[str], score_output: str | None = None) -> dict[str, VersionSamples]:
        """Start recording per-version samples (and predictions, for feedback) of ``versions``."""
        self.score_output = score_output
        samples = {v: VersionSamples(score_output=score_output) for v in versions}
        self._samples = SamplesStage(samples, score_output)
        return samples

    def unwatch(self) -> None:
        self._samples = None

    @property
    def samples(self) -> dict[str, VersionSamples] | None:
        return self._samples.samples if self._samples is not None else None

    @property
    def predictions(self) -> dict[str, tuple[str, np.ndarray[Any, Any]]] | None:
        """request id -> (version, predicted labels) while a rollout watches, for feedback."""
        return self._samples.predictions if self._samples is not None else None

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return self._breakers.breakers if self._breakers is not None else {}

    def forget_version(self, version: str) -> None:
        if self._breakers is not None:
            self._breakers.breakers.pop(version, None)

    def _router_stages(self, router: Router) -> tuple[ShadowStage | None, CascadeStage | None]:
        if router is not self._router:
            self._router = router
            settings = router.shadow_settings()
            if settings is not None and self.mirror is None:
                self.mirror = ShadowMirror(
                    self._resolve,
                    queue=settings.queue,
                    concurrency=settings.concurrency,
                    timeout=settings.timeout,
                    score_output=self.score_output,
                )
            self._cascade = CascadeStage(router) if type(router).escalates else None
        shadow = ShadowStage(self.mirror) if self.mirror is not None and router.shadow_settings() else None
        return shadow, self._cascade

    def stages(self) -> tuple[Stage, ...]:
        """The stages the model needs now, outermost first (``()``: the plain path)."""
        shadow, cascade = self._router_stages(self._endpoint.router)
        cache = CacheStage(self.cache) if self.cache is not None else None
        ordered = (self._fallback, cache, self._breakers, self._samples, shadow, cascade)
        return tuple(stage for stage in ordered if stage is not None)

    def _resolve(self, target: Target) -> VersionEndpoint | None:
        try:
            endpoint = self._endpoint if target.model == self.model else self._lookup(target.model)
        except LadleError:
            return None
        return endpoint.versions.get(target.version)

    # reporting and lifecycle --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for stage in self.stages():
            described.update(stage.describe())
        if self.mirror is not None and "shadow" not in described:
            described["shadow"] = self.mirror.describe()
        router = self._endpoint.router.describe()
        if router:
            described["router"] = router
        return described

    async def close(self) -> None:
        if self.mirror is not None:
            await self.mirror.close()
