"""The generation engine: a scheduler and a step-able runtime driven by one dedicated thread.

``EngineCore`` is the synchronous heart (``add`` / ``step`` / ``abort``), used by one thread at a time.
``GenerationEngine`` runs it in a thread of its own (torch releases the GIL while it computes), takes
requests and aborts from any thread through a queue, and hands chunks to asyncio consumers with one
``loop.call_soon_threadsafe`` per step and event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import Field

from ladle import (
    BlockPool,
    DeadlineExceededError,
    FinishReason,
    GenerationChunk,
    GenerationResult,
    InvalidRequestError,
    KVCacheManager,
    LadleError,
    ModelNotReadyError,
    PluginOptions,
    Priority,
    RuntimeFailureError,
    SamplingParams,
    ServerBusyError,
    StepRuntime,
    TextTokenizer,
    new_request_id,
    parse_options,
)

from .scheduler import Scheduler, StepPlan
from .sequence import Sequence, TextOutput
from .stream import TokenStream

__all__ = ["EngineCore", "EngineOptions", "EngineStats", "GenerationEngine"]

Event: TypeAlias = GenerationChunk | BaseException
Sink: TypeAlias = Callable[[Event], None]


class EngineOptions(PluginOptions):
    """Scheduling options (the ``[batcher]`` table of a model's config).

    ``max_num_seqs``: sequences running at once; ``max_batched_tokens``: tokens per step, prefill and
    decode together (longer prompts are prefilled in chunks); ``max_waiting``: queued requests beyond
    which new ones are refused (503); ``prefix_caching``: share the cache of identical prompt prefixes;
    ``watermark``: fraction of the cache kept free when admitting new sequences, so running ones can grow;
    ``speculative_max_seqs``: with a runtime that speculates, propose draft tokens only in steps where
    at most this many sequences decode (unset: in every step). Verifying drafts multiplies the
    target's work per step, which pays while a step is bound by reading weights (few sequences) and
    stops paying once it is bound by arithmetic (many sequences on a CPU); ``adaptive_speculation``:
    a sequence whose last round kept no draft asks for one, and pauses drafting while its rounds keep
    failing (``false``: always the runtime's most).
    """

    max_num_seqs: int = Field(default=64, ge=1)
    max_batched_tokens: int = Field(default=512, ge=1)
    max_waiting: int = Field(default=1024, ge=1)
    prefix_caching: bool = True
    watermark: float = Field(default=0.01, ge=0, lt=1)
    speculative_max_seqs: int | None = Field(default=None, ge=0)
    adaptive_speculation: bool = True


@dataclass
class EngineStats:
    """Counters over the engine's life; utilisations are averaged over steps."""

    steps: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    finished: int = 0
    aborted: int = 0
    kv_utilisation_sum: float = 0.0
    contiguous_utilisation_sum: float = 0.0
    request_utilisation_sum: float = 0.0
    #: Draft tokens the runtime was given room to propose, and how many of them the target accepted.
    draft_proposed: int = 0
    draft_accepted: int = 0

    def to_dict(self) -> dict[str, float]:
        steps = max(1, self.steps)
        return {
            "steps": self.steps,
            "prefill_tokens": self.prefill_tokens,
            "generated_tokens": self.generated_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "preemptions": self.preemptions,
            "finished": self.finished,
            "aborted": self.aborted,
            "kv_utilisation": self.kv_utilisation_sum / steps,
            "contiguous_max_len_utilisation": self.contiguous_utilisation_sum / steps,
            "contiguous_request_utilisation": self.request_utilisation_sum / steps,
            "draft_proposed": self.draft_proposed,
            "draft_accepted": self.draft_accepted,
            "draft_acceptance": self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0,
        }


class EngineCore:
    """Scheduler + runtime + per-request bookkeeping. Not thread-safe: one thread drives it."""

    def __init__(self, runtime: StepRuntime, options: EngineOptions | None = None) -> None:
        self.runtime = runtime
        self.options = options = options or EngineOptions()
        spec = runtime.cache_spec()
        self.cache = spec
        self.tokenizer: TextTokenizer = runtime.tokenizer
        self.eos_token_ids = self.tokenizer.eos_token_ids
        pool = BlockPool(spec.num_blocks, spec.block_size)
        self.kv = KVCacheManager(pool, prefix_caching=options.prefix_caching and spec.paged)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=options.max_num_seqs,
            max_batched_tokens=max(options.max_batched_tokens, 1),
            watermark_blocks=int(options.watermark * spec.num_blocks),
            lookahead=runtime.speculative_tokens(),
            lookahead_max_seqs=options.speculative_max_seqs,
            adapt_lookahead=options.adaptive_speculation,
        )
        self.stats = EngineStats()
        #: Called once per step with that step's times to first token and between tokens (seconds).
        self.timing: Callable[[list[float], list[float]], None] | None = None
        self._by_id: dict[int, Sequence] = {}
        self._ids = itertools.count()
        self._deadlines = 0
        self.stalled = False  # the last step had work but could schedule none of it

    # requests --------------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self.cache.max_model_len

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def __len__(self) -> int:
        return len(self._by_id)

    def new_sequence(
        self,
        tokens: Seq[int],
        params: SamplingParams,
        sink: Sink,
        *,
        request_id: str | None = None,
        priority: Priority = Priority.NORMAL,
        deadline: float | None = None,
    ) -> Sequence:
        """Validate a request and build its sequence (thread-safe; ``add`` it on the engine's thread)."""
        tokens = list(tokens)
        limit = self.cache.max_model_len
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if len(tokens) >= limit:
            raise InvalidRequestError(
                f"the prompt has {len(tokens)} tokens; this model's context holds {limit} "
                "(the prompt and at least one generated token)",
                param="prompt",
                prompt_tokens=len(tokens),
                max_model_len=limit,
            )
        vocab = self.tokenizer.vocab_size
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                raise InvalidRequestError(f"prompt token {token!r} is not in the vocabulary", param="prompt")
        room = limit - len(tokens)
        if params.max_tokens is not None and params.max_tokens > room:
            raise InvalidRequestError(
                f"max_tokens={params.max_tokens} plus the prompt's {len(tokens)} tokens exceeds the "
                f"context of {limit} tokens",
                param="max_tokens",
                prompt_tokens=len(tokens),
                max_model_len=limit,
            )
        seed = params.seed if params.seed is not None else (0 if params.greedy else random.getrandbits(63))
        stop_tokens = frozenset(params.stop_token_ids)
        if not params.ignore_eos:
            stop_tokens |= self.eos_token_ids
        return Sequence(
            next(self._ids),
            request_id or new_request_id(),
            tokens,
            params,
            max_tokens=params.max_tokens or room,
            seed=seed,
            stop_tokens=stop_tokens,
            output=TextOutput(self.tokenizer.decoder(tokens), params.stop),
            priority=priority,
            arrival=time.monotonic(),
            deadline=deadline,
            sink=sink,
        )

    def add(self, seq: Sequence) -> None:
        self._by_id[seq.id] = seq
        self.runtime.add_sequence(seq.id, seq.params)
        self.scheduler.add(seq)
        if seq.deadline is not None:
            self._deadlines += 1

    def abort(self, seq_id: int) -> Sequence | None:
        """Drop a sequence and free its blocks; returns it (``None`` if it already left)."""
        seq = self._by_id.get(seq_id)
        if seq is None:
            return None
        self._leave(seq)
        self.stats.aborted += 1
        return seq

    def fail_all(self, error: BaseException) -> list[tuple[Sink, Event]]:
        """End every sequence with ``error`` (the engine is stopping or broken)."""
        events: list[tuple[Sink, Event]] = []
        for seq in list(self._by_id.values()):
            self._leave(seq)
            events.append((seq.sink, error))
        return events

    def _leave(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        del self._by_id[seq.id]
        if seq.deadline is not None:
            self._deadlines -= 1
        self.runtime.release_sequence(seq.id)

    # the step --------------------------------------------------------------------------------

    def step(self) -> list[tuple[Sink, Event]]:
        """Schedule, run the runtime once, and return the chunks (or errors) to hand out."""
        events: list[tuple[Sink, Event]] = []
        if self._deadlines:
            self._expire(events)
        plan = self.scheduler.schedule()
        self.stalled = not plan.items
        if not plan.items:
            return events
        try:
            outputs = self.runtime.step(plan.items, plan.copies)
            if len(outputs) != len(plan.items):
                raise RuntimeFailureError(
                    f"the runtime returned {len(outputs)} results for {len(plan.items)} items"
                )
            for item, tokens in zip(plan.items, outputs, strict=True):
                if item.lookahead and len(tokens) > item.lookahead + 1:
                    raise RuntimeFailureError(
                        f"the runtime returned {len(tokens)} tokens for an item with room for "
                        f"{item.lookahead} draft tokens"
                    )
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, LadleError)
                else RuntimeFailureError(f"the runtime failed: {type(exc).__name__}: {exc}")
            )
            for seq in plan.sequences:
                if seq.id in self._by_id:
                    self._leave(seq)
                    events.append((seq.sink, error))
            return events
        self.scheduler.computed(plan)
        self._account(plan)
        now = time.monotonic()
        first: list[float] = []
        gaps: list[float] = []
        for item, seq, tokens in zip(plan.items, plan.sequences, outputs, strict=True):
            if item.sample and tokens:
                if seq.last_emit:
                    gaps.append((now - seq.last_emit) / len(tokens))
                else:
                    first.append(now - seq.arrival)
                seq.last_emit = now
                events.append((seq.sink, self._accept(seq, tokens)))
            if item.lookahead:
                self.stats.draft_proposed += item.lookahead
                self.stats.draft_accepted += min(max(0, len(tokens) - 1), item.lookahead)
                self.scheduler.verified(seq, item, len(tokens))
        if self.timing is not None and (first or gaps):
            self.timing(first, gaps)
        return events

    def _accept(self, seq: Sequence, tokens: Seq[int]) -> GenerationChunk:
        new: list[int] = []
        reason: FinishReason | None = None
        output = seq.output
        for token in tokens:
            seq.tokens.append(token)
            new.append(token)
            if token in seq.stop_tokens or output.add(token):
                reason = "stop"
            elif seq.generated >= seq.max_tokens or len(seq.tokens) >= self.cache.max_model_len:
                reason = "length"
            if reason is not None:
                break
        self.stats.generated_tokens += len(new)
        chunk = GenerationChunk(
            output.take(final=reason is not None), new, seq.prompt_len, seq.generated, reason
        )
        if reason is not None:
            seq.finish_reason = reason
            self._leave(seq)
            self.stats.finished += 1
        return chunk

    def _account(self, plan: StepPlan) -> None:
        stats = self.stats
        stats.steps += 1
        for item, seq in zip(plan.items, plan.sequences, strict=True):
            if item.start < seq.prompt_len:
                stats.prefill_tokens += min(seq.prompt_len, item.start + len(item.tokens)) - item.start
        stats.preemptions = self.scheduler.preemptions
        stats.cached_prompt_tokens = self.scheduler.cached_tokens
        written, allocated = self.kv.pool.usage()
        if allocated:
            stats.kv_utilisation_sum += written / allocated
        running = self.scheduler.running
        if running:
            held = sum(seq.computed for seq in running)
            stats.contiguous_utilisation_sum += held / (len(running) * self.cache.max_model_len)
            stats.request_utilisation_sum += held / sum(seq.prompt_len + seq.max_tokens for seq in running)

    def _expire(self, events: list[tuple[Sink, Event]]) -> None:
        now = time.monotonic()
        for seq in [s for s in self._by_id.values() if s.deadline is not None and now >= s.deadline]:
            self._leave(seq)
            events.append(
                (seq.sink, DeadlineExceededError("the request's deadline passed", request_id=seq.request_id))
            )

    # synchronous driving (tests, benchmarks) -----------------------------------------------------

    def run_until_done(self, max_steps: int = 1_000_000) -> None:
        """Step until no sequence is left, delivering events to their sinks on this thread."""
        for _ in range(max_steps):
            if not self.has_work:
                return
            for sink, event in self.step():
                sink(event)
        raise RuntimeError(f"still busy after {max_steps} steps")


class GenerationEngine:
    """``EngineCore`` on a dedicated thread with an asyncio API (a ``ladle.generation.TextGenerator``).

    Requests and aborts reach the thread through a queue; the thread runs steps while there is work and
    sleeps otherwise. ``generate`` validates at once (400s are raised before anything is queued).
    """

    def __init__(
        self,
        runtime: StepRuntime,
        options: EngineOptions | Mapping[str, Any] | None = None,
        *,
        name: str = "",
    ) -> None:
        if not isinstance(options, EngineOptions):
            options = parse_options(EngineOptions, options, "batcher 'continuous'")
        self.core = EngineCore(runtime, options)
        self.options = options
        self.name = name or "ladle-engine"
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._accepting = True
        self._failure: LadleError | None = None
        self._submitted = 0  # written by callers' threads only
        self._left = 0  # written by the engine thread only
        self._lock = threading.Lock()  # serialises stats() against the thread

    # TextGenerator -----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.core.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def load(self) -> int:
        """Requests submitted and not yet finished (queued or running)."""
        return self._submitted - self._left

    @property
    def waiting(self) -> int:
        """Requests queued and not yet running (read without locking: approximate)."""
        return len(self._inbox) + self.core.scheduler.num_waiting

    def generate(
        self,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        *,
        priority: Priority = Priority.NORMAL,
        request_id: str | None = None,
        deadline: float | None = None,
        add_special_tokens: bool = True,
    ) -> TokenStream:
        """Queue a request; returns its stream. Call on the event loop that will read the stream."""
        if self._failure is not None:
            raise ModelNotReadyError(f"the generation engine failed: {self._failure.message}")
        if self._thread is None or not self._accepting:
            raise ModelNotReadyError("the generation engine is not running")
        if self.load >= self.options.max_waiting + self.options.max_num_seqs:
            raise ServerBusyError("too many generation requests are queued", retry_after=1.0)
        if isinstance(prompt, str):
            tokens = self.core.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        else:
            try:
                tokens = [operator.index(token) for token in prompt]
            except TypeError:
                raise InvalidRequestError(
                    "prompt must be a string or a list of token ids", param="prompt"
                ) from None
        loop = asyncio.get_running_loop()
        seq = self.core.new_sequence(
            tokens,
            params or SamplingParams(),
            _NO_SINK,
            request_id=request_id,
            priority=priority,
            deadline=deadline,
        )
        stream = TokenStream(seq.request_id, seq.prompt_len, loop, functools.partial(self.abort, seq.id))
        seq.sink = _LoopSink(loop, stream)
        self._submitted += 1
        self._post(("add", seq))
        return stream

    async def complete(
        self, prompt: str | Seq[int], params: SamplingParams | None = None, **kwargs: Any
    ) -> GenerationResult:
        """Generate and wait for the whole result."""
        return await self.generate(prompt, params, **kwargs).collect()

    def abort(self, seq_id: int) -> None:
        """Abort a sequence (any thread); its blocks are freed before the next step."""
        self._post(("abort", seq_id))

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still in flight end with ``ModelNotReadyError``."""
        self._accepting = False
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    async def drain(self, timeout: float) -> None:
        """Refuse new requests, wait (up to ``timeout``) for those in flight to finish, then stop."""
        self._accepting = False
        give_up = time.monotonic() + timeout
        while self.load > 0 and time.monotonic() < give_up and self._failure is None:
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def stats(self) -> dict[str, float]:
        with self._lock:
            data = self.core.stats.to_dict()
            data["running"] = len(self.core.scheduler.running)
            data["waiting"] = self.core.scheduler.num_waiting
            data["free_blocks"] = self.core.kv.pool.free_blocks
            data["num_blocks"] = self.core.kv.pool.num_blocks
        return data

    # the thread ----------------------------------------------------------------------------------

    def _post(self, message: tuple[str, Any]) -> None:
        self._inbox.append(message)
        self._wake.set()

    def _run(self) -> None:
        core = self.core
        inbox = self._inbox
        stopped = ModelNotReadyError("the generation engine stopped")
        try:
            while not self._stopping:
                if not inbox and not core.has_work:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                with self._lock:
                    self._take_inbox()
                    events = core.step() if core.has_work else []
                self._deliver(events)
                if core.stalled:  # nothing fits until something changes: do not spin
                    self._wake.wait(0.005)
                    self._wake.clear()
        except BaseException as exc:  # a bug in the engine: fail every request rather than leave it hanging
            self._failure = stopped = RuntimeFailureError(
                f"the generation engine crashed: {type(exc).__name__}: {exc}"
            )
            raise
        finally:
            with self._lock:
                self._take_inbox()
                events = core.fail_all(stopped)
            self._deliver(events)

    def _take_inbox(self) -> None:
        core = self.core
        inbox = self._inbox
        while inbox:
            kind, payload = inbox.popleft()
            if kind == "add":
                core.add(payload)
            elif core.abort(payload) is not None:
                self._left += 1

    def _deliver(self, events: list[tuple[Sink, Event]]) -> None:
        if not events:
            return
        batches: dict[asyncio.AbstractEventLoop | None, list[tuple[Sink, Event]]] = {}
        for sink, event in events:
            if isinstance(event, BaseException) or event.finish_reason is not None:
                self._left += 1
            loop = sink.loop if isinstance(sink, _LoopSink) else None
            batches.setdefault(loop, []).append((sink, event))
        for loop, batch in batches.items():
            if loop is None:
                for sink, event in batch:
                    sink(event)
                continue
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(_dispatch, batch)


class _LoopSink:
    """Delivers to a stream on its event loop (batched by ``GenerationEngine._deliver``).

    It holds the stream weakly, so a consumer that drops its stream lets it be collected, and the
    stream's finaliser aborts the sequence.
    """

    __slots__ = ("loop", "stream")

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: TokenStream) -> None:
        self.loop = loop
        self.stream = weakref.ref(stream)

    def __call__(self, event: Event) -> None:
        stream = self.stream()
        if stream is not None:
            stream.deliver(event)


def _no_sink(event: Event) -> None:
    raise AssertionError("a sequence was added without a sink")


_NO_SINK: Sink = _no_sink


def _dispatch(batch: list[tuple[Sink, Event]]) -> None:
    for sink, event in batch:
        sink(event)
