"""The asyncio side of one request: chunks handed over from the engine thread, read by one consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from ladle import FinishReason, GenerationChunk, GenerationResult, Usage

__all__ = ["TokenStream"]


class TokenStream:
    """Implements ``ladle.generation.GenerationStream``.

    The engine thread never touches this object directly: it schedules ``deliver`` on the stream's
    event loop. A consumer that falls behind gets the chunks that piled up merged into one.
    """

    __slots__ = (
        "__weakref__",
        "_abort",
        "_chunks",
        "_done",
        "_error",
        "_finished",
        "_loop",
        "_waiter",
        "first_at",
        "on_end",
        "prompt_tokens",
        "request_id",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        loop: asyncio.AbstractEventLoop,
        abort: Callable[[], None],
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._loop = loop
        self._abort = abort
        self._chunks: list[GenerationChunk] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._done = False  # nothing more will arrive
        self._finished = False  # the engine is done with the request (finished, failed or aborted)
        #: ``time.monotonic()`` of the first chunk (0 until then).
        self.first_at = 0.0
        #: Called once when the request leaves the engine: with ``None`` when it finished, with the
        #: error that ended it, or with ``asyncio.CancelledError()`` when it was aborted.
        self.on_end: Callable[[BaseException | None], None] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    def deliver(self, event: GenerationChunk | BaseException) -> None:
        """Called on the stream's loop with the next chunk or the error that ends the stream."""
        if self._done:
            return
        if isinstance(event, BaseException):
            self._error = event
            self._done = self._finished = True
            self._ended(event)
        else:
            if not self.first_at:
                self.first_at = time.monotonic()
            self._chunks.append(event)
            if event.finish_reason is not None:
                self._done = self._finished = True
                self._ended(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ended(self, error: BaseException | None) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(error)

    def abort(self) -> None:
        """Stop generating; the engine frees the request's cache at its next step. A consumer
        waiting for the next chunk sees the stream end."""
        if not self._finished:
            self._done = self._finished = True
            self._chunks.clear()
            self._abort()
            self._ended(asyncio.CancelledError())
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        while True:
            chunks = self._chunks
            if chunks:
                if len(chunks) == 1:
                    return chunks.pop()
                return self._merge()
            error = self._error
            if error is not None:
                self._error = None
                raise error
            if self._done:
                raise StopAsyncIteration
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self.abort()
                raise
            finally:
                self._waiter = None

    def _merge(self) -> GenerationChunk:
        chunks = self._chunks
        last = chunks[-1]
        merged = GenerationChunk(
            "".join(c.text for c in chunks),
            [t for c in chunks for t in c.token_ids],
            last.prompt_tokens,
            last.completion_tokens,
            last.finish_reason,
        )
        chunks.clear()
        return merged

    async def collect(self) -> GenerationResult:
        text: list[str] = []
        tokens: list[int] = []
        reason: FinishReason = "abort"
        usage = Usage(self.prompt_tokens, 0)
        async for chunk in self:
            text.append(chunk.text)
            tokens.extend(chunk.token_ids)
            usage = chunk.usage
            if chunk.finish_reason is not None:
                reason = chunk.finish_reason
        return GenerationResult("".join(text), tokens, reason, usage)

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.abort()

    def __del__(self) -> None:
        # A consumer that dropped the stream without reading it to the end aborts the request.
        if not getattr(self, "_finished", True):
            self._finished = True
            self._abort()
            self._ended(asyncio.CancelledError())
