"""The continuous batcher: one generation engine beside each step-able runtime instance.

It implements ``ladle.generation.TextGenerator`` (``generate``, ``tokenizer``, ``max_model_len``) for
the generate and OpenAI endpoints, and ``Batcher.submit`` for the V2 protocol: a ``text_input``
BYTES tensor (one prompt per row) in, a ``text_output`` BYTES tensor out, sampling parameters from
the request's parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ladle.batching import Batcher, BatchObserver, ReplicaSet
from ladle.envelope import Arrays, InferenceRequest, Priority
from ladle.errors import ConfigError, InvalidInputError, ModelNotReadyError
from ladle.generation import GenerationResult, SamplingParams, StepRuntime, TextTokenizer
from ladle.instance import Instance

from .engine import EngineOptions, GenerationEngine
from .stream import TokenStream

__all__ = ["ContinuousBatcher", "runtime_of"]

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


#: Sink of one step's times to first token and between tokens, in seconds.
Timing = Callable[[list[float], list[float]], None]


def runtime_of(instance: Instance) -> StepRuntime:
    """The step-able runtime an instance runs in this process (the engine must sit beside it)."""
    executor = instance.executor
    runtime = getattr(executor, "runtime", None)
    if not isinstance(runtime, StepRuntime):
        raise ConfigError(
            f"batcher 'continuous' needs a step-able runtime (such as causal-lm) running in this process "
            f"(executor = 'thread'); instance {instance.name} of {instance.spec.model!r} has "
            f"{type(runtime).__name__ if runtime is not None else 'none'}",
            model=instance.spec.model,
        )
    return runtime


class ContinuousBatcher(Batcher):
    """Options: those of ``EngineOptions`` (``max_num_seqs``, ``max_batched_tokens``, ``max_waiting``,
    ``prefix_caching``, ``watermark``)."""

    def __init__(
        self, replicas: ReplicaSet, options: Mapping[str, Any], observer: BatchObserver | None = None
    ) -> None:
        super().__init__(replicas, options, observer)
        self.engine_options = EngineOptions.from_mapping(self.options)
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

    # TextGenerator -----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._engine().tokenizer

    @property
    def max_model_len(self) -> int:
        return self._engine().max_model_len

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        priority: Priority = Priority.NORMAL,
        request_id: str | None = None,
        deadline: float | None = None,
        add_special_tokens: bool = True,
    ) -> TokenStream:
        return self._engine().generate(
            prompt,
            params,
            priority=priority,
            request_id=request_id,
            deadline=deadline,
            add_special_tokens=add_special_tokens,
        )

    # Batcher -----------------------------------------------------------------------------------

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
        return asyncio.ensure_future(self._gather(streams))

    @staticmethod
    async def _gather(streams: list[TokenStream]) -> Arrays:
        try:
            results: list[GenerationResult] = await asyncio.gather(*(s.collect() for s in streams))
        except BaseException:
            for stream in streams:
                stream.abort()
            raise
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
