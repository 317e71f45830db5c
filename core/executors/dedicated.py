"""One dedicated thread that runs an event loop's blocking calls in order.

Per call this is one queue put and one wake-up of the loop when the call returns. It is cheaper
than ``loop.run_in_executor`` with a one-thread pool, which also builds a ``concurrent.futures``
future and chains it to an asyncio one. It costs per batch, on the event loop's thread and the
runtime's, at every executor's hot call.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DedicatedThread"]

T = TypeVar("T")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DedicatedThread:
    """Runs ``call(function, *args)`` on one thread of its own, one call at a time, in order.

    The thread starts with the first call and ends at ``close``. It is a daemon thread, so a
    runtime stuck in a call cannot keep the process from exiting.
    """

    __slots__ = ("_calls", "_name", "_thread")

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``function(*args)`` on the thread; the future (of the running loop) has its result
        or its exception. Cancelling the future does not stop a call that has started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._calls.put((loop, future, function, args))
        return future

    def close(self, wait: bool = False) -> None:
        """End the thread once the calls queued before this one have run (``wait``: until then)."""
        thread = self._thread
        if thread is not None:
            self._calls.put(None)
            if wait and thread is not threading.current_thread():
                thread.join()

    def _serve(self) -> None:
        take = self._calls.get
        while (call := take()) is not None:
            loop, future, function, args = call
            try:
                result = function(*args)
            except BaseException as exc:  # the caller gets every failure, as from a pool
                _answer(loop, _fail, future, exc)
            else:
                _answer(loop, _resolve, future, result)
            del call, future, args  # the thread must not keep the last batch alive while it waits


def _answer(
    loop: asyncio.AbstractEventLoop, how: Callable[..., None], future: asyncio.Future[Any], value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the call ran: nobody waits
        loop.call_soon_threadsafe(how, future, value)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
