"""Iterating in a child process: a generator function runs in a process of its own, ahead of its
consumer, and sends its items through a pipe.

Reading and parsing input files is pure Python: in the serving process it would hold the GIL, and
every online request would wait for it (up to the interpreter's switch interval, 5 ms, each time
the event loop wants the GIL back). In a child it runs beside the event loop instead, at idle
scheduling priority where asked (``idle``), so it takes only the CPU that serving leaves. The pipe
holds the child a few items ahead. What the child raises as a ``LadleError`` is raised by the
consumer, where the child reached it; a child that dies ends the iteration with
``RuntimeFailureError``, and a child whose parent dies exits at once.

The process starts at once and waits for its arguments (``begin``), so its start-up can overlap
other work (``ladle batch`` starts it while the model loads). Processes are spawned, never forked:
the parent has threads.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from ..errors import LadleError, RuntimeFailureError
from ..executors import DedicatedThread

__all__ = ["ChildIterator"]

T = TypeVar("T")
_ITEM, _END, _FAILED = "item", "end", "failed"
#: Seconds between the child's checks that its parent lives.
_WATCH_INTERVAL = 0.2


def _watch_parent(parent: int) -> None:
    """Exit as soon as the parent is gone (killed with SIGKILL, it had no say): a reader must never
    outlive the server, nor write into a store a restarted server reads again."""
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL)
    os._exit(1)


def _idle_priority(pid: int) -> None:
    """Run process ``pid`` only when a CPU would otherwise idle: Linux's ``SCHED_IDLE`` (any other
    task that wakes takes the CPU at once), elsewhere the lowest niceness."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 19)


def _serve(
    connection: Connection, function: Callable[..., Iterator[Any]], leading: tuple[Any, ...], parent: int
) -> None:
    """The child: ``function(*leading, *args)``'s items down ``connection``, then the end or the error.

    ``parent`` comes from the parent itself: read here, after the interpreter's start-up, it would
    already be init's pid had the parent been killed meanwhile, and the watch would never fire.
    """
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        args = connection.recv()
        for item in function(*leading, *args):
            connection.send((_ITEM, item))
        connection.send((_END, None))
    except LadleError as exc:
        connection.send((_FAILED, exc))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass  # the parent is gone or stopping
    finally:
        connection.close()


class ChildIterator(Generic[T]):
    """The items of ``function(*leading, *args)``, a module-level generator run in a child process
    (``async for``).

    ``begin(*args)`` starts it; ``close`` stops the child (at once if it is still running) and frees
    the pipe. With ``idle`` the child runs at idle scheduling priority: only on CPU time nothing else
    wants.
    """

    def __init__(
        self,
        function: Callable[..., Iterator[T]],
        *leading: Any,
        name: str,
        idle: bool = False,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, function, leading, os.getpid()), name=name, daemon=True
        )
        self._process.start()
        if idle:
            # From the parent, at once: the child's interpreter start-up and imports take a
            # fraction of a second of CPU, which online requests would feel at normal priority.
            assert self._process.pid is not None
            _idle_priority(self._process.pid)
        child.close()
        self._receiver = DedicatedThread(name)
        self._done = False

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    def begin(self, *args: Any) -> None:
        """Start ``function(*leading, *args)`` in the child."""
        self._connection.send(args)

    def _receive(self) -> Any:
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode
            return (_FAILED, RuntimeFailureError(f"the input reader process ended (exit code {code})"))

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        kind, value = await self._receiver.call(self._receive)
        if kind == _ITEM:
            item: T = value
            return item
        self._done = True
        if kind == _FAILED:
            raise value
        raise StopAsyncIteration

    def close(self) -> None:
        self._done = True
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)
        self._connection.close()
        self._receiver.close()
