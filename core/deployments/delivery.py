"""The data-path side of progressive delivery for one model.

A ``Delivery`` is attached to a ``ModelEndpoint`` (``endpoint.delivery``) only while the model
needs one: a router that mirrors or escalates, a circuit breaker, fallbacks or a response cache, or
a rollout that watches its versions. ``ModelEndpoint.submit`` then hands the request here. Without
one, submit takes its plain path and pays nothing for these features.

Outputs that did not come from the routed version for this request are returned as
``ServedOutputs`` (a ``dict`` of arrays that also says where they came from), so the HTTP layer can
report the serving version and a fallback in the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..batching import enforce_deadline
from ..envelope import Arrays, InferenceRequest
from ..errors import (
    LadleError,
    ModelNotFoundError,
    ModelNotReadyError,
    RuntimeFailureError,
    ServerBusyError,
)
from ..routing import Route, Router, Target
from .guards import VersionSamples, predicted_labels
from .mirror import ShadowMirror
from .resilience import CircuitBreaker, FallbackStep, ResiliencePolicy, ResponseCache

if TYPE_CHECKING:
    from ..serving import ModelEndpoint, VersionEndpoint

__all__ = ["Delivery", "ServedOutputs"]

Submitted = tuple["VersionEndpoint", "asyncio.Future[Arrays]"]
Escalate = Callable[[InferenceRequest, Arrays], Target | None]


class ServedOutputs(dict[str, np.ndarray[Any, Any]]):
    """Outputs served from somewhere other than the routed version's own run of this request.

    ``source`` is ``"cache"`` (a cached answer of ``version``), ``"cascade"`` (escalated to a larger
    model) or ``"fallback:version"``, ``"fallback:model"``, ``"fallback:cache"``,
    ``"fallback:static"``; ``reason`` says why (``"circuit_open"``, ``"overloaded"``, ``"unsure"``).
    ``version`` is ``None`` for a static response.
    """

    __slots__ = ("model", "reason", "source", "version")

    def __init__(
        self, outputs: Arrays, *, model: str, version: str | None, source: str, reason: str = ""
    ) -> None:
        super().__init__(outputs)
        self.model = model
        self.version = version
        self.source = source
        self.reason = reason

    @property
    def fallback(self) -> bool:
        return self.source.startswith("fallback")


def _resolved(outputs: Arrays) -> asyncio.Future[Arrays]:
    future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
    future.set_result(outputs)
    return future


def _relabel(inner: asyncio.Future[Arrays], **label: Any) -> asyncio.Future[Arrays]:
    """A future with ``inner``'s outcome, its outputs wrapped in ``ServedOutputs(**label)``."""
    outer: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()

    def done(future: asyncio.Future[Arrays]) -> None:
        if outer.done():
            return
        if future.cancelled():
            outer.cancel()
        elif (error := future.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(ServedOutputs(future.result(), **label))

    inner.add_done_callback(done)
    return outer


class Delivery:
    """Mirrors, cascades, circuit breakers, fallbacks, the response cache and rollout samples of one model."""

    def __init__(self, endpoint: ModelEndpoint, lookup: Callable[[str], ModelEndpoint]) -> None:
        self.model = endpoint.name
        self._endpoint = endpoint
        self._lookup = lookup
        self.policy = ResiliencePolicy()
        self.breakers: dict[str, CircuitBreaker] = {}
        self.cache: ResponseCache | None = None
        self.fallbacks: tuple[FallbackStep, ...] = ()
        self._static: dict[int, Arrays] = {}
        #: Per-version samples while a rollout watches this model (``None`` otherwise).
        self.samples: dict[str, VersionSamples] | None = None
        #: request id -> (version, predicted labels), kept while samples are watched, for feedback.
        self.predictions: dict[str, tuple[str, np.ndarray[Any, Any]]] | None = None
        self.prediction_capacity = 20_000
        self.score_output: str | None = None
        self.mirror: ShadowMirror | None = None
        self.fallback_counts: dict[str, int] = {}
        self._router: Router | None = None
        self._escalate: Escalate | None = None
        self._mirrors = False
        self._observing = False
        self._falling_back = False
        self._use_router(endpoint.router)

    # configuration (control path) ------------------------------------------------------------

    def _use_router(self, router: Router) -> None:
        self._router = router
        escalate = getattr(router, "escalate", None)
        self._escalate = escalate if callable(escalate) else None
        self._mirrors = bool(getattr(router, "emits_shadows", False))
        if self._mirrors and self.mirror is None:
            options = router.options
            self.mirror = ShadowMirror(
                self._resolve,
                queue=int(options.get("queue", 256)),
                concurrency=int(options.get("concurrency", 2)),
                timeout=float(options.get("timeout", 10.0)),
                score_output=self.score_output,
            )

    def configure(self, policy: ResiliencePolicy) -> None:
        """Apply a resilience policy (breakers, fallbacks, cache); replaces the previous one."""
        self.policy = policy
        self.breakers = {}
        self.fallbacks = tuple(policy.fallback)
        self._static = {
            i: step.static_arrays() for i, step in enumerate(self.fallbacks) if step.static is not None
        }
        if policy.cache is None:
            self.cache = None
        elif self.cache is None or self.cache.policy != policy.cache:
            self.cache = ResponseCache(policy.cache)
        self._update()

    def watch(self, versions: list[str], score_output: str | None = None) -> dict[str, VersionSamples]:
        """Start recording per-version samples (and predictions, for feedback) of ``versions``."""
        self.score_output = score_output
        self.samples = {v: VersionSamples(score_output=score_output) for v in versions}
        self.predictions = {}
        self._update()
        return self.samples

    def unwatch(self) -> None:
        self.samples = None
        self.predictions = None
        self._update()

    def _update(self) -> None:
        self._observing = bool(
            self.policy.circuit_breaker is not None or self.cache is not None or self.samples is not None
        )

    @property
    def needed(self) -> bool:
        """Whether the endpoint needs this object on its data path."""
        router = self._endpoint.router
        if router is not self._router:
            self._use_router(router)
        return bool(not self.policy.empty or self._mirrors or self._escalate or self.samples is not None)

    def _resolve(self, target: Target) -> VersionEndpoint | None:
        try:
            endpoint = self._endpoint if target.model == self.model else self._lookup(target.model)
        except LadleError:
            return None
        return endpoint.versions.get(target.version)

    # data path --------------------------------------------------------------------------------

    def submit(self, endpoint: ModelEndpoint, request: InferenceRequest) -> Submitted:
        """Route and queue ``request`` with the extras this model has configured."""
        if endpoint.router is not self._router:
            self._use_router(endpoint.router)
        route: Route | None = None
        version = request.version
        if version is None:
            table = endpoint.table
            if not table.versions:
                raise ModelNotReadyError(f"model {endpoint.name!r} has no ready version", model=endpoint.name)
            if len(table.versions) == 1 and not table.weights and not (self._mirrors or self._escalate):
                version = table.versions[-1]
            else:
                route = endpoint.router.route(request, table)
                primary = route.primary
                if primary.model != endpoint.name:
                    return self._forward(request, primary)
                version = primary.version
        return self._dispatch(endpoint, request, endpoint.loaded(version), route, True)

    def _dispatch(
        self,
        endpoint: ModelEndpoint,
        request: InferenceRequest,
        target: VersionEndpoint,
        route: Route | None,
        may_fall_back: bool,
    ) -> Submitted:
        version = target.version
        if target.signature is not None:
            target.signature.check_inputs(request.inputs)
        if target.input_checks is not None:
            target.input_checks(request.inputs)
        now = time.monotonic()
        breaker: CircuitBreaker | None = None
        if self.policy.circuit_breaker is not None:
            breaker = self.breakers.get(version)
            if breaker is None:
                breaker = self.breakers[version] = CircuitBreaker(version, self.policy.circuit_breaker)
            if not breaker.allow(now):
                if may_fall_back:
                    return self._fall_back(endpoint, request, target, "circuit_open", breaker)
                raise self._open_error(target, breaker, now)
        key: bytes | None = None
        cache = self.cache
        if cache is not None:
            key = cache.key(request)
            if key is not None:
                hit = cache.get(key, version, now)
                if hit is not None:
                    if breaker is not None:
                        breaker.release_probe()
                    request.version = version
                    return target, _resolved(
                        ServedOutputs(hit, model=self.model, version=version, source="cache")
                    )
        request.version = version
        try:
            future = target.batcher.submit(request)
        except (ServerBusyError, ModelNotReadyError):
            if breaker is not None:
                breaker.release_probe()
            if may_fall_back and self.fallbacks:
                return self._fall_back(endpoint, request, target, "overloaded", None)
            raise
        enforce_deadline(target.batcher, request, future)
        if self._observing:
            future.add_done_callback(partial(self._observe, request, key, breaker))
        if route is not None:
            if route.shadows and self.mirror is not None:
                self.mirror.offer(request, route.shadows, future)
            if self._escalate is not None:
                future = self._cascade(request, future, self._escalate)
        return target, future

    def _open_error(self, target: VersionEndpoint, breaker: CircuitBreaker, now: float) -> ServerBusyError:
        return ServerBusyError(
            f"version {target.version!r} of model {self.model!r} is failing (circuit open) and no "
            "fallback could serve",
            retry_after=max(1.0, breaker.retry_after(now)),
            model=self.model,
            version=target.version,
            reason="circuit_open",
        )

    def _observe(
        self,
        request: InferenceRequest,
        key: bytes | None,
        breaker: CircuitBreaker | None,
        future: asyncio.Future[Arrays],
    ) -> None:
        """Per response, while observing: feed the breaker, the cache and the rollout samples."""
        if future.cancelled():
            if breaker is not None:
                breaker.release_probe()  # the client left: says nothing about the version
            return
        error = future.exception()
        outputs = future.result() if error is None else None
        version = request.version or ""
        if breaker is not None:
            failed = error is not None and not (isinstance(error, LadleError) and error.status < 500)
            breaker.record(time.monotonic(), failed)
        if outputs is None:
            if self.samples is not None and (samples := self.samples.get(version)) is not None:
                samples.record(request, None, error)
            return
        if key is not None and self.cache is not None:
            self.cache.put(key, version, dict(outputs), time.monotonic())  # a copy: callers may edit theirs
        if self.samples is not None and (samples := self.samples.get(version)) is not None:
            samples.record(request, outputs, None)
            predictions = self.predictions
            if predictions is not None:
                labels = predicted_labels(outputs, self.score_output)
                if labels is not None:
                    predictions[request.id] = (version, labels)
                    if len(predictions) > self.prediction_capacity:
                        del predictions[next(iter(predictions))]

    def _forward(self, request: InferenceRequest, target: Target) -> Submitted:
        """Submit a copy of ``request`` to another model (or an explicit version of this one)."""
        copy = InferenceRequest(
            target.model,
            request.inputs,
            version=target.version or None,
            id=request.id,
            parameters=request.parameters,
            deadline=request.deadline,
            priority=request.priority,
            routing_key=request.routing_key,
            trace=request.trace,
            outputs=request.outputs,
            rows=request.rows,
        )
        copy.cancel = request.cancel
        copy.arrival = request.arrival
        endpoint = self._endpoint if target.model == self.model else self._lookup(target.model)
        return endpoint.submit(copy)

    def _cascade(
        self, request: InferenceRequest, small: asyncio.Future[Arrays], escalate: Escalate
    ) -> asyncio.Future[Arrays]:
        outer: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()

        def small_done(future: asyncio.Future[Arrays]) -> None:
            if outer.done():
                return
            if future.cancelled():
                outer.cancel()
                return
            error = future.exception()
            if error is not None:
                outer.set_exception(error)
                return
            outputs = future.result()
            try:
                target = escalate(request, outputs)
                if target is None:
                    outer.set_result(outputs)
                    return
                served, large = self._forward(request, target)
            except LadleError as exc:
                outer.set_exception(exc)
                return
            except Exception as exc:
                outer.set_exception(RuntimeFailureError(f"cascade failed: {type(exc).__name__}: {exc}"))
                return
            label = {
                "model": served.model,
                "version": served.version,
                "source": "cascade",
                "reason": "unsure",
            }
            _relabel(large, **label).add_done_callback(partial(_copy_outcome, outer))

        small.add_done_callback(small_done)
        return outer

    def _fall_back(
        self,
        endpoint: ModelEndpoint,
        request: InferenceRequest,
        routed: VersionEndpoint,
        reason: str,
        breaker: CircuitBreaker | None,
    ) -> Submitted:
        """Serve from the configured fallbacks, in order; refuse with 503 when none can."""
        now = time.monotonic()
        for index, step in enumerate(self.fallbacks):
            kind = step.kind
            if kind == "static":
                self._count(reason, kind)
                outputs = {
                    name: np.broadcast_to(a, (request.rows, *a.shape[1:])) if a.shape[0] == 1 else a
                    for name, a in self._static[index].items()
                }
                label = ServedOutputs(
                    outputs, model=self.model, version=None, source="fallback:static", reason=reason
                )
                return routed, _resolved(label)
            if kind == "cache":
                key = self.cache.key(request) if self.cache is not None else None
                found = self.cache.any(key, now) if self.cache is not None and key is not None else None
                if found is None:
                    continue
                self._count(reason, kind)
                served = ServedOutputs(
                    found[1], model=self.model, version=found[0], source="fallback:cache", reason=reason
                )
                return routed, _resolved(served)
            try:
                if step.model is None or step.model == self.model:
                    version_endpoint = endpoint.versions.get(step.version or "")
                    if version_endpoint is None or version_endpoint is routed:
                        continue
                    served_by, future = self._dispatch(endpoint, request, version_endpoint, None, False)
                else:
                    if self._falling_back:
                        continue  # models that fall back on each other: do not go round in circles
                    self._falling_back = True
                    try:
                        served_by, future = self._forward(request, Target(step.model, step.version or ""))
                    finally:
                        self._falling_back = False
            except (ServerBusyError, ModelNotReadyError, ModelNotFoundError):
                continue
            self._count(reason, kind)
            request.version = served_by.version
            relabelled = _relabel(
                future,
                model=served_by.model,
                version=served_by.version,
                source=f"fallback:{kind}",
                reason=reason,
            )
            return served_by, relabelled
        if breaker is not None:
            raise self._open_error(routed, breaker, now)
        raise ServerBusyError(
            f"version {routed.version!r} of model {self.model!r} is overloaded and no fallback could serve",
            model=self.model,
            version=routed.version,
            reason=reason,
        )

    def _count(self, reason: str, kind: str) -> None:
        key = f"{reason}:{kind}"
        self.fallback_counts[key] = self.fallback_counts.get(key, 0) + 1

    # reporting and lifecycle --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {}
        if self.breakers:
            described["circuit_breakers"] = {v: b.describe() for v, b in self.breakers.items()}
        if self.fallback_counts:
            described["fallbacks"] = dict(self.fallback_counts)
        if self.cache is not None:
            described["cache"] = self.cache.describe()
        if self.mirror is not None:
            described["shadow"] = self.mirror.describe()
        describe = getattr(self._endpoint.router, "describe", None)
        if callable(describe):
            described["router"] = describe()
        return described

    async def close(self) -> None:
        if self.mirror is not None:
            await self.mirror.close()


def _copy_outcome(target: asyncio.Future[Arrays], source: asyncio.Future[Arrays]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
