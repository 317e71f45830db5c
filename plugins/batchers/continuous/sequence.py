"""One request's state inside the engine: its tokens, how far its cache reaches, its text and stop rules."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from ladle import FinishReason, GenerationChunk, IncrementalDecoder, Priority, SamplingParams

__all__ = ["Sequence", "SequenceStatus", "TextOutput"]


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class TextOutput:
    """Incremental text of one sequence, holding back any tail that could still become a stop string."""

    __slots__ = ("_decoder", "_longest", "_searched", "_stop", "emitted", "text")

    def __init__(self, decoder: IncrementalDecoder, stop: tuple[str, ...]) -> None:
        self._decoder = decoder
        self._stop = stop
        self._longest = max((len(s) for s in stop), default=0)
        self._searched = 0
        self.text = ""
        self.emitted = 0

    def add(self, token: int) -> bool:
        """Append a token's text; ``True`` when a stop string now appears (the text is cut before it)."""
        piece = self._decoder.step(token)
        if not piece:
            return False
        self.text += piece
        if not self._stop:
            return False
        start = max(0, self._searched - self._longest + 1)
        found = -1
        for stop in self._stop:
            index = self.text.find(stop, start)
            if index >= 0 and (found < 0 or index < found):
                found = index
        self._searched = len(self.text)
        if found >= 0:
            self.text = self.text[:found]
            return True
        return False

    def take(self, final: bool) -> str:
        """Text not yet handed out; unless ``final``, minus a tail that is a prefix of a stop string."""
        end = len(self.text)
        if not final and self._stop:
            end -= self._held_back()
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted : end]
        self.emitted = end
        return piece

    def _held_back(self) -> int:
        text = self.text
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stop):
                return size
        return 0


class Sequence:
    """A request in the engine. ``computed`` counts the tokens whose K/V are in the cache."""

    __slots__ = (
        "arrival",
        "computed",
        "deadline",
        "draft_misses",
        "draft_pause",
        "draft_tokens",
        "finish_reason",
        "id",
        "last_emit",
        "max_tokens",
        "output",
        "params",
        "preemptions",
        "priority",
        "prompt_len",
        "request_id",
        "seed",
        "sink",
        "status",
        "stop_tokens",
        "tokens",
    )

    def __init__(
        self,
        seq_id: int,
        request_id: str,
        tokens: list[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        seed: int,
        stop_tokens: frozenset[int],
        output: TextOutput,
        priority: Priority,
        arrival: float,
        deadline: float | None,
        sink: Callable[[GenerationChunk | BaseException], None],
    ) -> None:
        self.id = seq_id
        self.request_id = request_id
        self.tokens = tokens
        self.prompt_len = len(tokens)
        self.params = params
        self.max_tokens = max_tokens
        self.seed = seed
        self.stop_tokens = stop_tokens
        self.output = output
        self.priority = priority
        self.arrival = arrival
        self.last_emit = 0.0  # when the last token went out (0: none yet)
        self.deadline = deadline
        self.sink = sink
        self.status = SequenceStatus.WAITING
        self.computed = 0
        self.preemptions = 0
        self.finish_reason: FinishReason | None = None
        #: Speculative decoding: draft tokens to ask for next (``-1``: the runtime's most), rounds in a
        #: row where the target accepted none, and steps left before drafting again.
        self.draft_tokens = -1
        self.draft_misses = 0
        self.draft_pause = 0

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def order(self) -> tuple[int, float, int]:
        """Scheduling order: priority class first, then arrival."""
        return (int(self.priority), self.arrival, self.id)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.id}, status={self.status.value}, prompt={self.prompt_len}, "
            f"generated={self.generated}, computed={self.computed})"
        )
