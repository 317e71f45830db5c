"""The delivery stages of progressive delivery, each a ``ladle.Stage`` on a model's admission path.

Outermost first, as ``Delivery.stages`` composes them:

- ``FallbackStage``: when the routed version is refused (open circuit, full queue, not ready), the
  configured fallbacks serve in order: a cached answer of any version, another version, another
  model, a static answer;
- ``CacheStage``: identical requests (same inputs and parameters; a deterministic generation) are
  answered from a per-version cache within its TTL;
- ``BreakerStage``: a circuit breaker per version refuses a failing version for a while;
- ``SamplesStage``: while a rollout watches the model, every outcome of a watched version is a
  sample for its guards (and, for tensors, a prediction kept for accuracy feedback);
- ``ShadowStage``: routes that carry shadow targets hand a copy to the model's shadow mirror;
- ``CascadeStage``: a cascade router escalates answers it is unsure of to a larger target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..admission import Call, Pending, Proceed, Stage
from ..envelope import Arrays, InferenceRequest
from ..errors import LadleError, ModelNotFoundError, ModelNotReadyError, RuntimeFailureError, ServerBusyError
from ..generation import GenerationResult
from ..routing import Router, Target
from ..tensors import numpy_dtype
from .guards import VersionSamples, predicted_labels
from .mirror import ShadowMirror
from .resilience import BreakerPolicy, CircuitBreaker, FallbackStep, ResponseCache

__all__ = [
    "FALLBACK_VERSION",
    "BreakerStage",
    "CacheStage",
    "CascadeStage",
    "CircuitOpenError",
    "FallbackStage",
    "SamplesStage",
    "ShadowStage",
    "cache_key",
]

#: The version a static fallback answer reports: no version of the model computed it.
FALLBACK_VERSION = "fallback"


class CircuitOpenError(ServerBusyError):
    """The routed version's circuit is open and no fallback could serve (503 with Retry-After)."""

    code = "circuit_open"


def cache_key(request: InferenceRequest) -> bytes | None:
    """The cache key of a request: its tensors and parameters, or a deterministic generation."""
    generation = request.generation
    if generation is not None:
        return generation.fingerprint() if generation.deterministic else None
    return ResponseCache.key(request)


# fallback ------------------------------------------------------------------------------------------


class FallbackStage(Stage):
    """Serves from the configured fallbacks, in order, when the routed version refuses a request."""

    def __init__(self, model: str, steps: tuple[FallbackStep, ...], cache: ResponseCache | None) -> None:
        self.model = model
        self.steps = steps
        self.cache = cache
        self._static = {i: step.static_arrays() for i, step in enumerate(steps) if step.static is not None}
        self.counts: dict[str, int] = {}
        self._forwarding = False

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        try:
            return proceed(call)
        except (ServerBusyError, ModelNotReadyError) as exc:
            reason = "circuit_open" if isinstance(exc, CircuitOpenError) else "overloaded"
            pending = self._fall_back(call, proceed, reason)
            if pending is None:
                raise
            return pending

    def _fall_back(self, call: Call, proceed: Proceed, reason: str) -> Pending | None:
        request = call.request
        for index, step in enumerate(self.steps):
            kind = step.kind
            try:
                if kind == "static":
                    if request.generation is not None:
                        continue
                    pending = Pending.answered(
                        self.model, FALLBACK_VERSION, self._static_outputs(call, index), "fallback:static"
                    )
                elif kind == "cache":
                    key = cache_key(request) if self.cache is not None else None
                    found = self.cache.any(key, time.monotonic()) if self.cache is not None and key else None
                    if found is None:
                        continue
                    pending = Pending.answered(self.model, found[0], found[1], "fallback:cache")
                elif step.model is None or step.model == self.model:
                    target = call.endpoint.versions.get(step.version or "")
                    if target is None or target is call.target:
                        continue
                    pending = proceed(call.to(target))
                else:
                    if self._forwarding:
                        continue  # models that fall back on each other: do not go round in circles
                    self._forwarding = True
                    try:
                        pending = call.admission.admit(request.derive(step.model, step.version or None))
                    finally:
                        self._forwarding = False
            except (ServerBusyError, ModelNotReadyError, ModelNotFoundError):
                continue
            counted = f"{reason}:{kind}"
            self.counts[counted] = self.counts.get(counted, 0) + 1
            return pending.relabel(f"fallback:{kind}", reason)
        return None

    def _static_outputs(self, call: Call, index: int) -> Arrays:
        """The static answer, one row per request row, in the datatypes the model's signature gives."""
        signature = call.target.signature
        rows = call.request.rows
        outputs: Arrays = {}
        for name, array in self._static[index].items():
            spec = next((s for s in signature.outputs if s.name == name), None) if signature else None
            if spec is not None and spec.datatype != "BYTES":
                array = array.astype(numpy_dtype(spec.datatype), copy=False)
            outputs[name] = np.broadcast_to(array, (rows, *array.shape[1:])) if array.shape[0] == 1 else array
        return outputs

    def describe(self) -> dict[str, Any]:
        return {"fallbacks": dict(self.counts)} if self.counts else {}


# cache ---------------------------------------------------------------------------------------------


class CacheStage(Stage):
    """Answers identical requests from the version's cache; fills it from every answer."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        key = cache_key(call.request)
        if key is None:
            return proceed(call)
        version = call.target.version
        hit = self.cache.get(key, version, time.monotonic())
        if hit is not None:
            return Pending.answered(call.target.model, version, hit, "cache")
        pending = proceed(call)
        cache = self.cache

        def put(result: Arrays | GenerationResult | None, error: BaseException | None) -> None:
            if result is not None and pending.version == version and pending.source == "model":
                cache.put(
                    key, version, dict(result) if isinstance(result, dict) else result, time.monotonic()
                )

        pending.add_done_callback(put)
        return pending

    def describe(self) -> dict[str, Any]:
        return {"cache": self.cache.describe()}


# circuit breaker -----------------------------------------------------------------------------------


class BreakerStage(Stage):
    """A circuit breaker per version: refuses an open version (``CircuitOpenError``), counts outcomes."""

    def __init__(self, model: str, policy: BreakerPolicy) -> None:
        self.model = model
        self.policy = policy
        self.breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, version: str) -> CircuitBreaker:
        breaker = self.breakers.get(version)
        if breaker is None:
            breaker = self.breakers[version] = CircuitBreaker(version, self.policy)
        return breaker

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        version = call.target.version
        breaker = self.breaker(version)
        now = time.monotonic()
        if not breaker.allow(now):
            raise CircuitOpenError(
                f"version {version!r} of model {self.model!r} is failing (circuit open) and no "
                "fallback could serve",
                retry_after=max(1.0, breaker.retry_after(now)),
                model=self.model,
                version=version,
                reason="circuit_open",
            )
        try:
            pending = proceed(call)
        except LadleError:
            breaker.release_probe()  # refused at once: says nothing about the version's health
            raise

        def record(result: Arrays | GenerationResult | None, error: BaseException | None) -> None:
            if error is not None and isinstance(error, LadleError) and error.code == "cancelled":
                breaker.release_probe()  # the client left: says nothing about the version
                return
            failed = error is not None and not (isinstance(error, LadleError) and error.status < 500)
            breaker.record(time.monotonic(), failed)

        pending.add_done_callback(record)
        return pending

    def describe(self) -> dict[str, Any]:
        if not self.breakers:
            return {}
        return {"circuit_breakers": {v: b.describe() for v, b in self.breakers.items()}}


# rollout samples -----------------------------------------------------------------------------------


class SamplesStage(Stage):
    """Records every outcome of a watched version for its rollout guards, and the predicted labels of
    tensor answers for accuracy feedback (bounded)."""

    def __init__(
        self,
        samples: dict[str, VersionSamples],
        score_output: str | None,
        capacity: int = 20_000,
    ) -> None:
        self.samples = samples
        self.score_output = score_output
        #: request id -> (version, predicted labels), for ``feedback``.
        self.predictions: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
        self.capacity = capacity

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        pending = proceed(call)
        samples = self.samples.get(call.target.version)
        if samples is None:
            return pending
        request = call.request

        def record(result: Arrays | GenerationResult | None, error: BaseException | None) -> None:
            if pending.source != "model":
                return  # another version or model answered: not this version's sample
            outputs = result if isinstance(result, dict) else None
            samples.record(request, outputs, error)
            if outputs is not None:
                labels = predicted_labels(outputs, self.score_output)
                if labels is not None:
                    predictions = self.predictions
                    predictions[request.id] = (pending.version, labels)
                    if len(predictions) > self.capacity:
                        del predictions[next(iter(predictions))]

        pending.add_done_callback(record)
        return pending


# shadow --------------------------------------------------------------------------------------------


class ShadowStage(Stage):
    """Hands a copy of every request whose route carries shadow targets to the model's mirror."""

    def __init__(self, mirror: ShadowMirror) -> None:
        self.mirror = mirror

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        pending = proceed(call)
        route = call.route
        if route is not None and route.shadows:
            self.mirror.offer(call.request, route.shadows, pending)
        return pending

    def describe(self) -> dict[str, Any]:
        return {"shadow": self.mirror.describe()}

    async def close(self) -> None:
        await self.mirror.close()


# cascade -------------------------------------------------------------------------------------------


class CascadeStage(Stage):
    """Escalates a tensor answer the router is unsure of to the target ``router.escalate`` names."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        small = proceed(call)
        request = call.request
        if call.route is None or request.generation is not None or small.future is None:
            return small
        future = small.future
        outer = Pending(small.model, small.version, future.get_loop().create_future())
        escalate: Callable[[InferenceRequest, Arrays], Target | None] = self.router.escalate

        def small_done(done: Any) -> None:
            assert outer.future is not None
            if outer.future.done():
                return
            if done.cancelled():
                outer.future.cancel()
                return
            error = done.exception()
            if error is not None:
                outer.future.set_exception(error)
                return
            outputs = done.result()
            try:
                target = escalate(request, outputs)
                if target is None:
                    outer.future.set_result(outputs)
                    return
                large = call.admission.admit(request.derive(target.model, target.version or None))
            except LadleError as exc:
                outer.future.set_exception(exc)
                return
            except Exception as exc:
                outer.future.set_exception(
                    RuntimeFailureError(f"cascade failed: {type(exc).__name__}: {exc}")
                )
                return
            outer.model, outer.version = large.model, large.version
            outer.relabel("cascade", "unsure")
            assert large.future is not None
            large.future.add_done_callback(lambda f: _copy_outcome(outer, f))

        future.add_done_callback(small_done)
        return outer

    def describe(self) -> dict[str, Any]:
        return {"router": self.router.describe()}


def _copy_outcome(target: Pending, source: Any) -> None:
    future = target.future
    assert future is not None
    if future.done():
        return
    if source.cancelled():
        future.cancel()
    elif (error := source.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(source.result())
