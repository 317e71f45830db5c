"""The continuous batcher: one generation engine beside each step-able runtime instance.

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
    ReplicaSet,
    SamplingParams,
    StepRuntime,
    TextTokenizer,
    parse_options,
)

from .engine import EngineOptions, GenerationEngine
from .stream import TokenStream

__all__ = ["ContinuousBatcher", "runtime_of"]

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


class ContinuousBatcher(Batcher):
    """Options: those of ``EngineOptions`` (``max_num_seqs``, ``max_batched_tokens``, ``max_waiting``,
    ``prefix_caching``, ``watermark``); unknown ones are refused."""

    streams: ClassVar[bool] = True
    enforces_deadlines: ClassVar[bool] = True

    def __init__(
        self, replicas: ReplicaSet, options: Mapping[str, Any], observer: BatchObserver | None = None
    ) -> None:
        super().__init__(replicas, options, observer)
        self.engine_options = parse_options(EngineOptions, self.options, "batcher 'continuous'")
        self._engines: dict[int, GenerationEngine] = {}
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
            self._engines.pop(key).stop(timeout=0)
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

    def _engine(self) -> GenerationEngine:
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.replicas.model!r} is draining")
        engines = (
            self._sync()
            if self.replicas.changed.is_set() or not self._engines
            else list(self._engines.values())
        )
        if not engines:
            raise ModelNotReadyError(f"model {self.replicas.model!r} has no ready instance")
        return min(engines, key=lambda engine: engine.load)

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
        engine = self._engine()
        if payload.messages is not None:
            prompt: str | list[int] = engine.tokenizer.encode_chat(list(payload.messages))
            special = False
        else:
            prompt = payload.prompt if isinstance(payload.prompt, str) else list(payload.prompt or ())
            special = payload.add_special_tokens
        try:
            stream = engine.generate(
                prompt,
                payload.sampling,
                priority=request.priority,
                request_id=request.id,
                deadline=request.deadline,
                add_special_tokens=special,
            )
        except LadleError as exc:
            self.observer.requests_dropped((request,), exc.code)
            raise
        stream.on_end = lambda error: self._report(request, stream.first_at, error)
        return stream

    def _report(self, request: InferenceRequest, first_at: float, error: BaseException | None) -> None:
        """One stats record per request, when it leaves the engine."""
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

    async def start(self) -> None:
        self._sync()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        self._accepting = False
        engines = list(self._engines.values())
        self._engines.clear()
        await asyncio.gather(*(engine.drain(drain_timeout) for engine in engines))

    @property
    def queue_depth(self) -> int:
        return sum(engine.waiting for engine in self._engines.values())

    @property
    def in_flight(self) -> int:
        return sum(engine.load for engine in self._engines.values())

    def stats(self) -> list[dict[str, float]]:
        """Per-engine counters (steps, tokens, preemptions, cache utilisation)."""
        return [engine.stats() for engine in self._engines.values()]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{TEXT_INPUT} must be UTF-8 text", input=TEXT_INPUT) from None
    if isinstance(value, str):
        return value
    raise InvalidInputError(f"{TEXT_INPUT} must hold text, got {type(value).__name__}", input=TEXT_INPUT)
