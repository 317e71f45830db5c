"""Generative serving contracts: the generation payload, sampling parameters, stream chunks, the
step-able runtime.

Three parties meet here without importing each other:

* a **step-able runtime** (``StepRuntime``, e.g. the causal-LM runtime) runs one step of a model over
  a set of sequences whose K/V live in a cache it owns, laid out in blocks (see ``ladle.kvcache``);
* a **continuous batcher** decides, at every step, which sequences run and how many tokens each
  feeds (chunked prefill and decode share one token budget), and owns the block tables;
* the **admission pipeline** hands it requests whose payload is a ``GenerationPayload`` (through
  ``Batcher.stream``) and gets back a ``GenerationStream`` of ``GenerationChunk`` objects.
"""

from __future__ import annotations

import hashlib
import math
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import orjson

from .envelope import Arrays, Batch
from .errors import InvalidInputError, InvalidRequestError
from .runtime import Runtime

__all__ = [
    "MAX_STOP_STRINGS",
    "CacheSpec",
    "ChatMessage",
    "FinishReason",
    "GenerationChunk",
    "GenerationPayload",
    "GenerationResult",
    "GenerationStream",
    "IncrementalDecoder",
    "SamplingParams",
    "StepItem",
    "StepRuntime",
    "TextTokenizer",
    "Usage",
]

#: ``"stop"``: an end-of-sequence token, a stop token or a stop string; ``"length"``: ``max_tokens``
#: or the context is full; ``"abort"``: the request was cancelled.
FinishReason = Literal["stop", "length", "abort"]
ChatMessage = Mapping[str, Any]

MAX_STOP_STRINGS = 16
_SEED_LIMIT = 2**63


def _integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequestError(f"{name} must be an integer, got {value!r}", param=name)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequestError(f"{name} must be {bound}, got {value}", param=name)
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", param=name)
    return float(value)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop. Greedy unless ``temperature`` > 0.

    ``max_tokens=None`` generates until a stop condition or the end of the context. ``top_k=0`` and
    ``top_p=1`` disable those filters. ``seed`` makes sampling reproducible whatever else shares the
    batch. ``stop`` strings end generation and are not part of the returned text; ``stop_token_ids``
    end it too (as do the model's end-of-sequence tokens unless ``ignore_eos``). Construction
    validates every field and raises ``InvalidRequestError`` naming the parameter.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    FIELDS: ClassVar[frozenset[str]] = frozenset(
        ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos")
    )

    def __post_init__(self) -> None:
        # Accept a single stop string and lists where tuples are stored (the dataclass stays hashable).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, 1)
        temperature = _number("temperature", self.temperature)
        if temperature < 0:
            raise InvalidRequestError(
                f"temperature must be at least 0, got {temperature}", param="temperature"
            )
        top_p = _number("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p}", param="top_p")
        _integer("top_k", self.top_k, 0)
        if self.seed is not None:
            _integer("seed", self.seed, -_SEED_LIMIT, _SEED_LIMIT - 1)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop must be a string or a list of non-empty strings", param="stop")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError(f"stop takes at most {MAX_STOP_STRINGS} strings", param="stop")
        if not isinstance(self.stop_token_ids, tuple):
            raise InvalidRequestError("stop_token_ids must be a list of integers", param="stop_token_ids")
        for token in self.stop_token_ids:
            _integer("stop_token_ids", token, 0)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequestError("ignore_eos must be true or false", param="ignore_eos")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, strict: bool = True) -> SamplingParams:
        """Build from JSON-like request fields (``stop`` may be one string; ``null`` means the default).

        With ``strict``, an unknown key raises ``InvalidRequestError`` naming it; without, such keys
        are ignored (an OpenAI body carries many fields that are not sampling parameters).
        """
        if not isinstance(data, Mapping):
            raise InvalidRequestError("parameters must be an object", param="parameters")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls.FIELDS:
                if strict:
                    raise InvalidRequestError(
                        f"unknown generation parameter {key!r}; known: {sorted(cls.FIELDS)}",
                        param=key,
                        known=sorted(cls.FIELDS),
                    )
                continue
            if value is None:
                continue
            if key == "stop":
                if isinstance(value, str):
                    value = (value,)
                elif isinstance(value, list | tuple):
                    value = tuple(value)
                else:
                    raise InvalidRequestError("stop must be a string or a list of strings", param="stop")
            elif key == "stop_token_ids":
                if not isinstance(value, list | tuple):
                    raise InvalidRequestError("stop_token_ids must be a list of integers", param=key)
                value = tuple(value)
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "stop_token_ids": list(self.stop_token_ids),
            "ignore_eos": self.ignore_eos,
        }


@dataclass(frozen=True, slots=True)
class GenerationPayload:
    """What a generation request asks for: a prompt (text or token ids) or chat messages, and how to
    sample. Chat messages are rendered by the serving version's own chat template, after routing,
    so a canary with another template renders them its own way."""

    prompt: str | tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] | None = None
    sampling: SamplingParams = SamplingParams()
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("a generation request needs a prompt or messages (not both)")
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))
        if isinstance(self.messages, list):
            object.__setattr__(self, "messages", tuple(self.messages))

    @property
    def deterministic(self) -> bool:
        """Whether the same payload always generates the same tokens (greedy, or seeded)."""
        return self.sampling.greedy or self.sampling.seed is not None

    def fingerprint(self) -> bytes:
        """A digest of everything that decides the generated tokens."""
        data = {
            "prompt": self.prompt,
            "messages": self.messages,
            "sampling": self.sampling.to_dict(),
            "special": self.add_special_tokens,
        }
        return hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request (OpenAI's ``usage`` object)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class GenerationChunk:
    """What a stream yields: the text and tokens produced since the previous chunk.

    ``finish_reason`` is set on the last chunk only (which may carry no new text). The counters are
    running totals, so the last chunk's ``usage`` is the request's usage.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)


@dataclass(slots=True)
class GenerationResult:
    """A whole generation, for callers that do not stream."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage


@runtime_checkable
class GenerationStream(Protocol):
    """An async iterator of chunks for one request.

    Cancelling the task that iterates it, calling ``abort``, or leaving ``async with`` early aborts the
    request and frees its cache at the next step. Errors (a deadline, a failed runtime) are raised
    from ``__anext__`` as ``LadleError``.
    """

    request_id: str
    prompt_tokens: int

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def __anext__(self) -> GenerationChunk: ...

    def abort(self) -> None: ...

    async def collect(self) -> GenerationResult:
        """Read the stream to its end and return the whole generation."""
        ...

    async def __aenter__(self) -> GenerationStream: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...


class IncrementalDecoder(Protocol):
    """Turns tokens into text one at a time; ``step`` returns ``None`` while a character is incomplete."""

    def step(self, token_id: int) -> str | None: ...


class TextTokenizer(Protocol):
    """A model's tokenizer, chat template and special tokens."""

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def decoder(self, context: Sequence[int] = ()) -> IncrementalDecoder:
        """A fresh incremental decoder for one sequence; ``context`` is the tail of its prompt."""
        ...

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """Render chat messages (``{"role": ..., "content": ...}``) into one prompt string.

        Raises ``InvalidRequestError`` for messages the template refuses.
        """
        ...

    def encode_chat(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        """Render and tokenize chat messages, adding special tokens only where the template does not."""
        ...


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The cache a step-able runtime allocated, as the batcher must manage it.

    ``paged=False`` declares a runtime that cannot page: each sequence then gets one slot of
    ``max_model_len`` tokens (``block_size == max_model_len`` and ``num_blocks`` slots), and a block
    table always holds one entry, the slot.
    """

    paged: bool
    block_size: int
    num_blocks: int
    max_model_len: int
    bytes_per_token: int

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.num_blocks <= 0 or self.max_model_len <= 0:
            raise ValueError(f"invalid cache spec {self}")
        if not self.paged and self.block_size < self.max_model_len:
            raise ValueError("an unpaged cache needs block_size >= max_model_len (one slot per sequence)")


@dataclass(slots=True)
class StepItem:
    """One sequence's share of a step.

    The runtime feeds ``tokens`` (the sequence's tokens at positions ``start ..
    start + len(tokens) - 1``), writing their K/V through ``block_table`` (position ``p`` lives in
    block ``block_table[p // block_size]`` at offset ``p % block_size``) and attending to every position
    before them. When ``sample`` is set it returns the next token(s), drawn with ``params``; a sampled
    draw is reproducible from ``seed`` and ``output_index`` (how many tokens the sequence had
    generated before this step) alone.

    ``lookahead`` (speculative decoding, only for a runtime whose ``speculative_tokens()`` is
    positive) grants room for that many positions after ``tokens``: ``block_table`` covers positions
    up to ``start + len(tokens) + lookahead - 1`` and the runtime may write K/V there for draft tokens
    it proposes and verifies in this step. It then returns between 1 and ``lookahead + 1`` tokens:
    the accepted drafts and one token of the target's own. Returning ``m`` tokens means the K/V of
    positions before ``start + len(tokens) + m - 1`` are valid; the batcher rolls back the rest.
    """

    seq_id: int
    tokens: Sequence[int]
    start: int
    block_table: Sequence[int]
    sample: bool
    params: SamplingParams
    seed: int = 0
    output_index: int = 0
    lookahead: int = 0


class StepRuntime(Runtime):
    """Base class of runtimes driven step by step by a continuous batcher.

    Its plugin registers it with ``capabilities={"steps": True, "preferred_batcher": "continuous"}``.

    After ``load`` the runtime has allocated its cache (``cache_spec`` says how). Per request the batcher
    calls ``add_sequence`` once, ``step`` at every step the sequence takes part in, and
    ``release_sequence`` once when it finishes or is aborted (the abort of the contract: per-sequence
    state goes, its blocks already went back to the batcher's pool). ``step`` may return more than one
    token for an item (speculative decoding); the batcher accepts them in order. A runtime that
    proposes and verifies draft tokens says how many per sequence with ``speculative_tokens``; the
    batcher then grants decoding items a ``StepItem.lookahead`` from what the step's token budget and
    the cache have left.
    """

    name: ClassVar[str] = "step-runtime"

    @property
    @abstractmethod
    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer (available after ``load``)."""

    @abstractmethod
    def cache_spec(self) -> CacheSpec:
        """The cache allocated by ``load``."""

    def add_sequence(self, seq_id: int, params: SamplingParams) -> None:
        """A sequence joins; keep per-sequence state here if the runtime needs any."""

    def speculative_tokens(self) -> int:
        """Draft tokens the runtime can propose and verify per decoding sequence in one step
        (``0``, the default: it returns one token per sampled item)."""
        return 0

    @abstractmethod
    def step(self, items: Sequence[StepItem], copies: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
        """Run one forward step over ``items``; per item, the tokens it produced (``[]`` unless ``sample``).

        ``copies`` are ``(source, destination)`` block copies to make before any write (copy-on-write).
        Items never share a block they write to.
        """

    def release_sequence(self, seq_id: int) -> None:
        """A sequence left (finished or aborted): drop its per-sequence state."""

    def predict(self, batch: Batch) -> Arrays:
        raise InvalidInputError(
            f"runtime {self.name!r} generates token by token: serve it with batcher = 'continuous' "
            "and use the generate endpoints"
        )
