"""Circuit breaker state machine and the response cache, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ladle import InferenceRequest
from ladle.deployments.resilience import (
    BreakerPolicy,
    BreakerState,
    CachePolicy,
    CircuitBreaker,
    FallbackStep,
    ResiliencePolicy,
    ResponseCache,
)


def breaker(**policy: float) -> CircuitBreaker:
    return CircuitBreaker(
        "v1", BreakerPolicy(**{"error_ratio": 0.5, "min_requests": 4, "cooldown": 5, **policy})
    )


def test_opens_on_the_error_ratio_after_the_minimum_requests() -> None:
    b = breaker()
    for t, failed in enumerate([True, True, True]):
        assert b.allow(float(t))
        b.record(float(t), failed)
    assert b.state is BreakerState.CLOSED  # three failures, but fewer than min_requests
    b.record(3.0, False)
    assert b.state is BreakerState.OPEN  # 3 of 4 >= 50%
    assert not b.allow(4.0)
    assert b.retry_after(4.0) == pytest.approx(4.0)


def test_old_outcomes_leave_the_window() -> None:
    b = breaker(window=10)
    for t in range(3):
        b.record(float(t), True)
    for t in range(20, 24):
        b.record(float(t), False)  # the failures are 20 s old by now
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_the_probes_through_and_closes_when_they_succeed() -> None:
    b = breaker(probes=2)
    for t in range(4):
        b.record(float(t), True)
    assert b.state is BreakerState.OPEN
    assert b.allow(9.0) and b.state is BreakerState.HALF_OPEN
    assert b.allow(9.0)
    assert not b.allow(9.0)  # only two probes at a time
    b.record(9.5, False)
    b.record(9.6, False)
    assert b.state is BreakerState.CLOSED
    assert [state for _, state, _ in b.transitions] == ["open", "half_open", "closed"]


def test_a_failed_probe_opens_it_again() -> None:
    b = breaker()
    for t in range(4):
        b.record(float(t), True)
    assert b.allow(10.0)
    b.record(10.1, True)
    assert b.state is BreakerState.OPEN and not b.allow(11.0)
    b.release_probe()  # harmless when not half-open
    assert b.allow(16.0)


def request(values: list[float], **parameters: object) -> InferenceRequest:
    return InferenceRequest("m", {"x": np.array([values], dtype=np.float32)}, parameters=dict(parameters))


def test_the_cache_keys_on_inputs_and_parameters() -> None:
    key = ResponseCache.key
    assert key(request([1, 2])) == key(request([1, 2]))
    assert key(request([1, 2])) != key(request([1, 3]))
    assert key(request([1, 2])) != key(request([1, 2], temperature=0.5))
    as_int = InferenceRequest("m", {"x": np.array([[1, 2]], dtype=np.int32)})
    assert key(request([1, 2])) != key(as_int)
    assert key(InferenceRequest("m", {"t": np.array(["a"], dtype=object)})) is None


def test_the_cache_expires_and_evicts_the_least_recently_used() -> None:
    cache = ResponseCache(CachePolicy(ttl=10, max_entries=2))
    outputs = {"score": np.array([0.5], dtype=np.float32)}
    a, b, c = (ResponseCache.key(request([v])) for v in (1.0, 2.0, 3.0))
    assert a is not None and b is not None and c is not None
    cache.put(a, "v1", outputs, now=0.0)
    assert cache.get(a, "v1", now=5.0) is outputs
    assert cache.get(a, "v2", now=5.0) is None  # per version
    assert cache.get(a, "v1", now=11.0) is None  # expired
    cache.put(b, "v1", outputs, now=11.0)
    cache.put(a, "v1", outputs, now=12.0)  # a is now the most recently used
    cache.put(c, "v1", outputs, now=13.0)
    assert len(cache) == 2
    assert cache.get(b, "v1", now=14.0) is None and cache.get(a, "v1", now=14.0) is outputs
    assert cache.any(c, now=14.0) == ("v1", outputs)
    assert (cache.hits, cache.misses) == (2, 3)


def test_a_fallback_is_exactly_one_kind() -> None:
    assert FallbackStep(version="v1").kind == "version"
    assert FallbackStep(model="other").kind == "model"
    assert FallbackStep(cache=True).kind == "cache"
    step = FallbackStep(static={"score": [0.0]})
    assert step.kind == "static" and step.static_arrays()["score"].shape == (1,)
    with pytest.raises(ValidationError, match="one of"):
        FallbackStep(version="v1", cache=True)
    with pytest.raises(ValidationError):
        ResiliencePolicy.model_validate({"circuit_breaker": {"error_ratio": 2}})
    assert ResiliencePolicy().empty
