"""Noticing clients that go away while their request is queued or running.

ASGI reports a disconnect only to a ``receive()`` call that is waiting for it, and a task per
request just to wait would cost more than the rest of a fast request. So requests are tracked in
two generations swapped by one timer tick: a request still unanswered one to two ticks after it
arrived gets a task that waits for ``http.disconnect`` and then abandons the request
(``CancelSignal.abandon``: the admission pipeline cancels its future or aborts its stream).
Requests answered within a tick never cost a task, and leave the watch as they are answered:
holding an answered request until the next tick would keep its whole connection state alive long
enough for the garbage collector to promote it, and at thousands of requests a second the full
collections that follow cost more than everything else here. ``track`` hands back the generation
(a dict) a request joined; deleting the request from it once it is answered ends the watch,
whether that generation is young, old or already rotated out. A stream
is watched from its first byte. Once the answer is out (``CancelSignal.finish``), the server's own
``http.disconnect`` (which ASGI servers send when the response completes) ends a waiting task
without effect.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive

from ..envelope import CancelSignal

__all__ = ["DisconnectWatch", "watch_now"]


def watch_now(receive: Receive, cancel: CancelSignal) -> asyncio.Task[None]:
    """Wait for the client to go away from now on (long answers: streams)."""
    return asyncio.get_running_loop().create_task(_wait(receive, cancel))


async def _wait(receive: Receive, cancel: CancelSignal) -> None:
    while not cancel.finished:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel.abandon()  # a no-op once the answer went out
            return


class DisconnectWatch:
    """The watch over one server's HTTP requests (see the module docstring)."""

    def __init__(self, tick: float = 0.025) -> None:
        self.tick = tick
        #: Requests that arrived since the last tick, and those of the tick before.
        self._young: dict[CancelSignal, Receive] = {}
        self._old: dict[CancelSignal, Receive] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, receive: Receive, cancel: CancelSignal) -> dict[CancelSignal, Receive]:
        """Watch a request whose body has been read (one receiver at a time). Returns the
        generation it joined: ``del generation[cancel]`` once it is answered stops the watch."""
        young = self._young
        young[cancel] = receive
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._rotate)
        return young

    def _rotate(self) -> None:
        for cancel, receive in self._old.items():
            task = watch_now(receive, cancel)
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)
        self._old, self._young = self._young, {}
        self._timer = None
        if self._old:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._rotate)
