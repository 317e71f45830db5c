"""Failure handling per model: a circuit breaker per version, fallbacks and a response cache.

Configured per model as a ``resilience`` table (or the ``resilience`` deployment option)::

    [models.fraud.resilience]
    circuit_breaker = { error_ratio = 0.5, min_requests = 20, window = 10, cooldown = 5, probes = 3 }
    fallback = [{ cache = true }, { version = "v1" }, { static = { score = [0.0] } }]
    cache = { ttl = 60, max_entries = 4096 }

A breaker opens when a version's error ratio over its window reaches ``error_ratio`` (after at least
``min_requests``), refuses that version for ``cooldown`` seconds, then lets ``probes`` requests through
(half-open): all succeed and it closes, one fails and it opens again. Fallbacks are tried in order
when the routed version is open-circuited or overloaded. The cache answers identical inputs (same
names, types, shapes, bytes and parameters) for the same version within ``ttl`` seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from enum import StrEnum
from hashlib import blake2b
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..envelope import Arrays, InferenceRequest
from ..generation import GenerationResult

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CachePolicy",
    "CircuitBreaker",
    "FallbackStep",
    "ResiliencePolicy",
    "ResponseCache",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerPolicy(_Strict):
    error_ratio: float = Field(default=0.5, gt=0, le=1)
    min_requests: int = Field(default=20, ge=1)
    window: float = Field(default=10.0, gt=0, description="seconds of outcomes counted")
    cooldown: float = Field(default=5.0, gt=0, description="seconds open before probing")
    probes: int = Field(default=3, ge=1, description="requests let through while half-open")


class CachePolicy(_Strict):
    ttl: float = Field(default=60.0, gt=0)
    max_entries: int = Field(default=4096, ge=1)


class FallbackStep(_Strict):
    """One fallback: another version of the model, another model, a cached or a static response."""

    version: str | None = None
    model: str | None = None
    cache: bool = False
    static: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> FallbackStep:
        kinds = sum([self.model is not None or self.version is not None, self.cache, self.static is not None])
        if kinds != 1:
            raise ValueError("a fallback is one of: version (and/or model), cache = true, static = {outputs}")
        return self

    @property
    def kind(self) -> str:
        if self.cache:
            return "cache"
        if self.static is not None:
            return "static"
        return "model" if self.model is not None else "version"

    def static_arrays(self) -> Arrays:
        """The static outputs as arrays (one row, or as many rows as given)."""
        arrays: Arrays = {}
        for name, value in (self.static or {}).items():
            array = np.asarray(value)
            arrays[name] = array.reshape(1) if array.ndim == 0 else array
        return arrays


class ResiliencePolicy(_Strict):
    circuit_breaker: BreakerPolicy | None = None
    fallback: list[FallbackStep] = Field(default_factory=list)
    cache: CachePolicy | None = None

    @property
    def empty(self) -> bool:
        return self.circuit_breaker is None and not self.fallback and self.cache is None


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """The breaker of one version; ``allow`` and ``record`` are called on the data path."""

    __slots__ = (
        "_failures",
        "_outcomes",
        "_probe_ok",
        "_probes_out",
        "opened_at",
        "policy",
        "state",
        "transitions",
        "version",
    )

    def __init__(self, version: str, policy: BreakerPolicy) -> None:
        self.version = version
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.opened_at = 0.0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._probes_out = 0
        self._probe_ok = 0
        #: (wall time, new state, why); drained into the event history by the controller.
        self.transitions: list[tuple[float, BreakerState, str]] = []

    def _set(self, state: BreakerState, why: str) -> None:
        self.state = state
        self.transitions.append((time.time(), state, why))

    def retry_after(self, now: float) -> float:
        return max(0.0, self.opened_at + self.policy.cooldown - now)

    def allow(self, now: float) -> bool:
        """Whether a request may go to this version now (half-open: only the probes)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            if now - self.opened_at < self.policy.cooldown:
                return False
            self._probes_out = self._probe_ok = 0
            self._set(BreakerState.HALF_OPEN, "cooldown over; probing")
        if self._probes_out < self.policy.probes:
            self._probes_out += 1
            return True
        return False

    def _open(self, now: float, why: str) -> None:
        self.opened_at = now
        self._outcomes.clear()
        self._failures = 0
        self._set(BreakerState.OPEN, why)

    def record(self, now: float, failed: bool) -> None:
        """The outcome of one request this breaker let through."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            if failed:
                self._open(now, "a probe failed")
            else:
                self._probe_ok += 1
                if self._probe_ok >= self.policy.probes:
                    self._set(BreakerState.CLOSED, f"{self._probe_ok} probes succeeded")
            return
        if state is BreakerState.OPEN:
            return  # a late answer from before the breaker opened
        outcomes = self._outcomes
        outcomes.append((now, failed))
        self._failures += failed
        horizon = now - self.policy.window
        while outcomes and outcomes[0][0] < horizon:
            self._failures -= outcomes.popleft()[1]
        total = len(outcomes)
        if total >= self.policy.min_requests and self._failures >= self.policy.error_ratio * total:
            self._open(now, f"{self._failures} of {total} requests failed within {self.policy.window:g}s")

    def release_probe(self) -> None:
        """A probe that never ran (refused at once): free its slot."""
        if self.state is BreakerState.HALF_OPEN and self._probes_out:
            self._probes_out -= 1

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "recent_requests": len(self._outcomes),
            "recent_failures": self._failures,
        }


#: What the cache holds: tensor outputs, or a whole generation.
Cached = Arrays | GenerationResult


class ResponseCache:
    """Outputs of identical inputs, per version, with a TTL and an entry bound (least recently used
    goes first). Object (BYTES) inputs are not cached."""

    __slots__ = ("_entries", "hits", "misses", "policy")

    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self._entries: OrderedDict[bytes, dict[str, tuple[float, Cached]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(request: InferenceRequest) -> bytes | None:
        """A digest of the inputs and parameters; ``None`` when they cannot be hashed."""
        digest = blake2b(digest_size=16)
        for name, array in request.inputs.items():
            if array.dtype.kind == "O":
                return None
            digest.update(name.encode())
            digest.update(array.dtype.str.encode())
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array).data)
        if request.parameters:
            try:
                digest.update(orjson.dumps(request.parameters, option=orjson.OPT_SORT_KEYS))
            except TypeError:
                return None
        if request.outputs:
            digest.update(repr(tuple(request.outputs)).encode())
        return digest.digest()

    def get(self, key: bytes, version: str, now: float) -> Cached | None:
        versions = self._entries.get(key)
        entry = versions.get(version) if versions is not None else None
        if entry is None or entry[0] < now:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def any(self, key: bytes, now: float) -> tuple[str, Cached] | None:
        """The freshest unexpired entry of any version (for the cache fallback)."""
        versions = self._entries.get(key)
        if not versions:
            return None
        best = max(versions.items(), key=lambda item: item[1][0])
        return (best[0], best[1][1]) if best[1][0] >= now else None

    def put(self, key: bytes, version: str, outputs: Cached, now: float) -> None:
        entries = self._entries
        versions = entries.get(key)
        if versions is None:
            versions = entries[key] = {}
            if len(entries) > self.policy.max_entries:
                entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        versions[version] = (now + self.policy.ttl, outputs)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
