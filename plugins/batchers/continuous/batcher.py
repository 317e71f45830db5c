"""The continuous batcher: one generation engine beside each step-able runtime instance.

With several instances, a generation goes to the engine whose KV cache already holds the longest
prefix of its prompt (a system prompt many requests share, say), unless that engine is busier than
the least loaded one by more than ``prefix_slack`` sequences (default 2); among engines caching as
much, and without any cached prefix, it goes to the least loaded (``prefix_aware = false`` always
picks the least loaded).

- ``stream(request)`` takes a generation request (``request.generation``: a prompt or chat messages,
  rendered with this version's chat template, and sampling parameters) and returns its chunks;
- ``submit(request)`` serves the V2 protocol: a ``text_input`` BYTES tensor (one prompt per row)
  in, ``text_output`` / ``finish_reason`` / ``completion_tokens`` tensors out, sampling parameters
  from the request's parameters.

Each request reaches the stats layer once, when it leaves its engine (finished, failed, cancelled),
and each engine step reports its times to first token and between tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ladle import (
    Arrays,
    Batcher,
    BatchObserver,
    ConfigError,
    GenerationResult,
    InferenceRequest,
    Instance,
    InvalidInputError,
    LadleError,
    ModelNotReadyError,
    Priority,
    ReplicaSet,
    SamplingParams,
    StepRuntime,
    TextTokenizer,
    parse_options,
)

from .engine import EngineOptions, GenerationEngine
from .stream import TokenStream

__all__ = ["ContinuousBatcher", "ContinuousOptions", "runtime_of"]

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
#: The code the stats layer counts for requests that left because the client went away.
CANCELLED = "cancelled"


#: Sink of one step's times to first token and between tokens, in seconds.
Timing = Callable[[list[float], list[float]], None]


def runtime_of(instance: Instance) -> StepRuntime:
    """The step-able runtime an instance runs in this process (the engine must sit beside it)."""
    runtime = instance.executor.local_runtime
    if not isinstance(runtime, StepRuntime):
        raise ConfigError(
            f"batcher 'continuous' needs a step-able runtime (such as causal-lm) running in this process "
            f"(executor = 'thread'); instance {instance.name} of {instance.spec.model!r} has "
            f"{type(runtime).__name__ if runtime is not None else 'none in this process'}",
            model=instance.spec.model,
        )
    return runtime


class ContinuousOptions(EngineOptions):
    """The engine's options, plus how a request picks an engine among several instances."""

    prefix_aware: bool = True
    prefix_slack: int = Field(default=2, ge=0, description="extra sequences a prefix hit may queue behind")


class ContinuousBatcher(Batcher):
    """Options: those of ``EngineOptions`` (``max_num_seqs``, ``max_batched_tokens``, ``max_waiting``,
    ``prefix_caching``, ``watermark``, ``speculative_max_seqs``, ``adaptive_speculation``) and
    ``prefix_aware`` / ``prefix_slack``; unknown ones are refused."""

    streams: ClassVar[bool] = True
    enforces_deadlines: ClassVar[bool] = True

    def __init__(
        self, replicas: ReplicaSet, options: Mapping[str, Any], observer: BatchObserver | None = None
    ) -> None:
        super().__init__(replicas, options, observer)
        self.settings = parse_options(ContinuousOptions, self.options, "batcher 'continuous'")
        self.engine_options = EngineOptions(
            **self.settings.model_dump(exclude={"prefix_aware", "prefix_slack"})
        )
        #: Generations routed to an engine holding a prefix of their prompt, and all routed.
        self.prefix_routed = 0
        self.routed = 0
        self._engines: dict[int, GenerationEngine] = {}
        self._leaving: dict[int, GenerationEngine] = {}  # engines of instances that left the set
        self._accepting = True
        self._timing: Timing | None = None

    @property
    def timing(self) -> Timing | None:
        """Receives each step's times to first token and between tokens (the telemetry layer sets it)."""
        return self._timing

    @timing.setter
    def timing(self, sink: Timing | None) -> None:
        self._timing = sink
        for engine in self._engines.values():
            engine.core.timing = sink

    # engines ---------------------------------------------------------------------------------

    def _sync(self) -> list[GenerationEngine]:
        """Engines for the ready instances: new instances get one, removed ones lose theirs."""
        ready = {id(instance): instance for instance in self.replicas.ready()}
        for key in [key for key in self._engines if key not in ready]:
            # out of the set: no new sequences; the running ones finish in ``release``
            self._leaving[key] = self._engines.pop(key)
        for key, instance in ready.items():
            if key not in self._engines:
                engine = GenerationEngine(
                    runtime_of(instance),
                    self.engine_options,
                    name=f"ladle-generate-{instance.spec.model}-{instance.spec.version}-{instance.name}",
                )
                engine.core.timing = self._timing
                engine.start()
                self._engines[key] = engine
        self.replicas.changed.clear()
        return list(self._engines.values())

    def _live(self) -> list[GenerationEngine]:
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.replicas.model!r} is draining")
        engines = (
            self._sync()
            if self.replicas.changed.is_set() or not self._engines
            else list(self._engines.values())
        )
        if not engines:
            raise ModelNotReadyError(f"model {self.replicas.model!r} has no ready instance")
        return engines

    def _engine(self) -> GenerationEngine:
        return min(self._live(), key=lambda engine: engine.load)

    def _engine_for(self, tokens: list[int]) -> GenerationEngine:
        """The engine caching the longest prefix of ``tokens`` (within ``prefix_slack`` of the least
        loaded), else the least loaded. Reads the engines' caches without locking: an estimate."""
        engines = self._live()
        least = min(engines, key=lambda engine: engine.load)
        self.routed += 1
        if len(engines) == 1 or not self.settings.prefix_aware:
            return least
        hashes = least.core.kv.prefix_hashes(tokens)
        best, best_score = least, (0, -least.load)
        for engine in engines:
            if engine.load > least.load + self.settings.prefix_slack:
                continue
            pool = engine.core.kv.pool
            hits = 0
            for block_hash in hashes:
                if pool.lookup(block_hash) is None:
                    break
                hits += 1
            score = (hits, -engine.load)  # the longest cached prefix; among equals, the least loaded
            if score > best_score:
                best, best_score = engine, score
        best_hits = best_score[0]
        if best_hits:
            self.prefix_routed += 1
        return best

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._engine().tokenizer

    @property
    def max_model_len(self) -> int:
        return self._engine().max_model_len

    # the batcher contract ------------------------------------------------------------------------

    def stream(self, request: InferenceRequest) -> TokenStream:
        payload = request.generation
        if payload is None:
            raise InvalidInputError("a generation request needs a prompt or messages")
        tokenizer = self._engine().tokenizer
        if payload.messages is not None:
            tokens = tokenizer.encode_chat(list(payload.messages))
        elif isinstance(payload.prompt, str):
            tokens = tokenizer.encode(payload.prompt, add_special_tokens=payload.add_special_tokens)
        else:
            tokens = list(payload.prompt or ())
        engine = self._engine_for(tokens)
        self._foreground(request)
        try:
            stream = engine.generate(
                tokens,
                payload.sampling,
                priority=request.priority,
                request_id=request.id,
                deadline=request.deadline,
            )
        except LadleError as exc:
            self.observer.requests_dropped((request,), exc.code)
            raise
        stream.on_end = lambda error: self._report(request, stream.first_at, error)
        return stream

    def _foreground(self, request: InferenceRequest) -> None:
        """Online generations pace the server's background work from their start to their end."""
        if request.priority is not Priority.LOW:
            self.replicas.foreground.mark(time.monotonic())

    def _report(self, request: InferenceRequest, first_at: float, error: BaseException | None) -> None:
        """One stats record per request, when it leaves the engine."""
        self._foreground(request)
        if isinstance(error, asyncio.CancelledError):
            self.observer.requests_dropped((request,), CANCELLED)
            return
        now = time.monotonic()
        code = None if error is None else (error.code if isinstance(error, LadleError) else "runtime_error")
        self.observer.batch_done((request,), first_at or now, now, (code,))

    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        """V2: every row of ``text_input`` is generated as its own sequence; rows join the running batch."""
        data = request.inputs.get(TEXT_INPUT)
        if data is None:
            raise InvalidInputError(
                f"a generative model takes a BYTES input named {TEXT_INPUT!r}", input=TEXT_INPUT
            )
        params = SamplingParams.from_mapping(request.parameters, strict=False)
        prompts = [_text(value) for value in np.asarray(data).reshape(-1)]
        engine = self._engine()
        self._foreground(request)
        streams: list[TokenStream] = []
        try:
            for prompt in prompts:
                streams.append(
                    engine.generate(prompt, params, priority=request.priority, deadline=request.deadline)
                )
        except BaseException:
            for stream in streams:
                stream.abort()
            raise
        return asyncio.ensure_future(self._gather(request, streams))

    async def _gather(self, request: InferenceRequest, streams: list[TokenStream]) -> Arrays:
        try:
            results: list[GenerationResult] = await asyncio.gather(*(s.collect() for s in streams))
        except BaseException as exc:
            for stream in streams:
                stream.abort()
            self._report(request, min((s.first_at for s in streams if s.first_at), default=0.0), exc)
            raise
        self._report(request, min((s.first_at for s in streams if s.first_at), default=0.0), None)
        return {
            TEXT_OUTPUT: np.array([r.text.encode() for r in results], dtype=object),
            "finish_reason": np.array([r.finish_reason.encode() for r in results], dtype=object),
            "completion_tokens": np.array([r.usage.completion_tokens for r in results], dtype=np.int64),
        }

    async def release(self, instance: Instance, timeout: float) -> None:
        """The instance left: its engine finishes the sequences it runs (within ``timeout``), then stops."""
        self._sync()
        engine = self._leaving.pop(id(instance), None) or self._engines.pop(id(instance), None)
        if engine is not None:
            await engine.drain(timeout)

    async def start(self) -> None:
        self._sync()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        self._accepting = False
        engines = [*self._engines.values(), *self._leaving.values()]
        self._engines.clear()
        self._leaving.clear()
        await asyncio.gather(*(engine.drain(drain_timeout) for engine in engines))

    @property
    def queue_depth(self) -> int:
        return sum(engine.waiting for engine in [*self._engines.values(), *self._leaving.values()])

    @property
    def in_flight(self) -> int:
        """Sequences running (queued ones are ``queue_depth``)."""
        return sum(e.load - e.waiting for e in [*self._engines.values(), *self._leaving.values()])

    def stats(self) -> list[dict[str, float]]:
        """Per-engine counters (steps, tokens, preemptions, cache utilisation, draft tokens proposed
        and accepted); the first also carries the batcher's routing counters (``routed``,
        ``prefix_routed``)."""
        engines = [engine.stats() for engine in self._engines.values()]
        if engines:
            engines[0] = {**engines[0], "routed": self.routed, "prefix_routed": self.prefix_routed}
        return engines


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{TEXT_INPUT} must be UTF-8 text", input=TEXT_INPUT) from None
    if isinstance(value, str):
        return value
    raise InvalidInputError(f"{TEXT_INPUT} must hold text, got {type(value).__name__}", input=TEXT_INPUT)
