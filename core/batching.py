"""The batcher contract and the replica set it feeds.

A batcher sits in front of one version's replica set. It offers two calls, and the admission
pipeline picks by the request's payload:

- ``submit(request)`` for tensors: queues the request and returns a future that resolves to its
  outputs (or its error); the batcher decides when and how requests share a batch and which
  instance runs it;
- ``stream(request)`` for a generation payload (``request.generation``): returns a
  ``GenerationStream`` of chunks. Only batchers that declare ``streams = True`` take one.

Both refuse at once (raising) when the request can never be served: too many rows (413), a full
queue (503).

Every future resolves by its request's deadline, with ``DeadlineExceededError`` (504) if the answer
is not there by then. A batcher that keeps that promise itself, queued and running, says so with
``enforces_deadlines``; for any other, ``enforce_deadline`` arms one timer per request.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .envelope import Arrays, InferenceRequest, Priority
from .errors import DeadlineExceededError, InvalidRequestError
from .instance import Instance

if TYPE_CHECKING:
    from .generation import GenerationStream

__all__ = [
    "BatchObserver",
    "Batcher",
    "Foreground",
    "NullObserver",
    "ReplicaSet",
    "enforce_deadline",
    "expire",
]


class BatchObserver(Protocol):
    """Fed once per batch (never per request) by batchers; the telemetry layer implements it."""

    def batch_done(
        self,
        requests: Sequence[InferenceRequest],
        started: float,
        finished: float,
        errors: Sequence[str | None],
        outputs: Sequence[Arrays | None] | None = None,
        runtime: tuple[float, float] | None = None,
    ) -> None:
        """``started``/``finished`` are ``time.monotonic()``; ``errors[i]`` is the error code of request i;
        ``outputs[i]`` its outputs (``None`` when it failed); ``runtime`` the span the instance ran."""

    def requests_dropped(self, requests: Sequence[InferenceRequest], code: str) -> None:
        """Requests answered without running (deadline passed, cancelled, shed)."""


class NullObserver:
    def batch_done(
        self,
        requests: Sequence[InferenceRequest],
        started: float,
        finished: float,
        errors: Sequence[str | None],
        outputs: Sequence[Arrays | None] | None = None,
        runtime: tuple[float, float] | None = None,
    ) -> None:
        return None

    def requests_dropped(self, requests: Sequence[InferenceRequest], code: str) -> None:
        return None


class Foreground:
    """When work above ``Priority.LOW`` last ran anywhere in the server (``time.monotonic()``).

    Every replica set of a server shares one, so background work (jobs, batch scoring) is paced
    while any model serves online traffic, not only its own: on shared cores the job's decoding,
    storing and model calls slow every model's requests. Batchers ``mark`` it when foreground work
    starts (and a long one when it ends); ``recent`` says whether some ran in the last ``window``
    seconds.
    """

    __slots__ = ("at",)
    #: Seconds after foreground work last ran during which background work is paced.
    window: ClassVar[float] = 0.25

    def __init__(self) -> None:
        self.at = -math.inf

    def mark(self, at: float) -> None:
        self.at = at

    def recent(self, now: float) -> bool:
        return now - self.at <= self.window


class ReplicaSet:
    """The instances serving one version; placements add and remove instances here.

    Only the control path changes it (the scaling loop and the supervisor, through
    ``ladle.replica_control``): an instance joins once it is ready and leaves before it drains, and
    ``changed`` tells the batcher. ``pending`` counts instances being started for the set (not in
    it yet) and ``ready_at`` estimates when the first of them is ready (``time.monotonic()``; 0:
    unknown). ``standby`` is true while the version has no instance on purpose (scaled to zero);
    ``wake``, when set, is what a batcher calls when a request finds no live instance and nothing
    pending: it starts one if the version's policy allows, and says whether one is on its way.
    ``foreground`` is the server's ``Foreground`` (a set of its own when none is given).
    """

    def __init__(self, model: str, version: str, foreground: Foreground | None = None) -> None:
        self.model = model
        self.version = version
        self.foreground = foreground if foreground is not None else Foreground()
        self.instances: list[Instance] = []
        self.changed = asyncio.Event()
        self.pending = 0
        self.ready_at = 0.0
        self.standby = False
        self.wake: Callable[[], bool] | None = None
        #: ``(max_batch_rows, pads)``, once every instance knows its runtime's (batchers read
        #: both per batch; they change only with the instances).
        self._layout: tuple[int | None, bool] | None = None

    def add(self, instance: Instance) -> None:
        self.instances.append(instance)
        self._layout = None
        self.changed.set()

    def remove(self, instance: Instance) -> None:
        if instance in self.instances:
            self.instances.remove(instance)
        self._layout = None
        self.changed.set()

    def ready(self) -> list[Instance]:
        return [i for i in self.instances if i.ready]

    @property
    def any_ready(self) -> bool:
        return any(i.ready for i in self.instances)

    @property
    def max_batch_rows(self) -> int | None:
        """The smallest cap any instance's runtime declares (``None``: no cap)."""
        return (self._layout or self._measure_layout())[0]

    @property
    def pads(self) -> bool:
        """Whether every instance's runtime zero-pads ragged inputs (``RuntimeCapabilities.pads``)."""
        return (self._layout or self._measure_layout())[1]

    def _measure_layout(self) -> tuple[int | None, bool]:
        infos = [i.info for i in self.instances]
        known = [info for info in infos if info is not None]
        caps = [info.max_batch_rows for info in known if info.max_batch_rows]
        layout = (
            min(caps) if caps else None,
            bool(infos) and len(known) == len(infos) and all(info.pads for info in known),
        )
        if len(known) == len(infos):  # an instance still loading may declare more
            self._layout = layout
        return layout


class Batcher(ABC):
    """Base class of batcher plugins; one batcher per served version."""

    #: True when the batcher itself fails each future at its request's deadline, queued or running.
    enforces_deadlines: ClassVar[bool] = False
    #: True when the batcher generates: ``stream`` takes requests with a generation payload.
    streams: ClassVar[bool] = False
    #: Set by the telemetry layer on a batcher that ``streams``: called once per generation step with
    #: that step's times to first token and between tokens (seconds).
    timing: Callable[[list[float], list[float]], None] | None = None

    def __init__(
        self,
        replicas: ReplicaSet,
        options: Mapping[str, Any],
        observer: BatchObserver | None = None,
    ) -> None:
        self.replicas = replicas
        self.options = dict(options)
        self.observer: BatchObserver = observer or NullObserver()

    @abstractmethod
    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        """Queue ``request``; the future resolves to its outputs or raises its ``LadleError``.

        Raises ``PayloadTooLargeError`` or ``ServerBusyError`` at once instead of queueing.
        """

    def stream(self, request: InferenceRequest) -> GenerationStream:
        """Queue a generation request (``request.generation``); returns its stream of chunks.

        Raises ``InvalidRequestError`` (400) at once for parameters or a prompt the model cannot take,
        ``ServerBusyError`` (503) when full. Only batchers declaring ``streams`` implement it.
        """
        raise InvalidRequestError(
            f"model {self.replicas.model!r} does not generate text: its batcher takes tensors",
            model=self.replicas.model,
        )

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Start background tasks (called on the event loop before the first ``submit``)."""

    async def stop(self, drain_timeout: float = 30.0) -> None:  # noqa: B027 - optional hook
        """Stop accepting, finish what is queued (up to ``drain_timeout``), then stop tasks."""

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet handed to an instance)."""
        return 0

    @property
    def in_flight(self) -> int:
        return sum(i.in_flight for i in self.replicas.instances)

    @property
    def ongoing(self) -> int:
        """Requests queued plus running: what queue-depth autoscaling reads."""
        return self.queue_depth + self.in_flight

    async def release(self, instance: Instance, timeout: float) -> None:  # noqa: B027 - optional hook
        """``instance`` left the replica set and is about to stop: finish (within ``timeout``) the work
        this batcher runs on it outside ``Instance.execute`` — a generation engine beside it, say."""

    def stats(self) -> list[dict[str, float]]:
        """Counters of each generation engine, one mapping per engine (steps, tokens, preemptions,
        cache use: the fields ``ladle_generation_*`` gauges read); empty for a batcher that does
        not generate."""
        return []

    def predicted_wait(self, priority: Priority = Priority.NORMAL) -> float | None:
        """Seconds a request of ``priority`` arriving now would wait for its answer (``None``: the
        batcher does not predict)."""
        return None


def expire(future: asyncio.Future[Arrays], request: InferenceRequest) -> None:
    """Fail ``future`` with ``DeadlineExceededError`` (if still pending) and signal the runtime side."""
    if not future.done():
        request.cancel.cancel("deadline")
        future.set_exception(
            DeadlineExceededError("deadline passed before the request finished", request_id=request.id)
        )


def enforce_deadline(batcher: Batcher, request: InferenceRequest, future: asyncio.Future[Arrays]) -> None:
    """Make ``future`` fail at the request's deadline, unless ``batcher`` already does."""
    if batcher.enforces_deadlines or request.deadline is None or future.done():
        return
    handle = asyncio.get_running_loop().call_at(request.deadline, expire, future, request)
    future.add_done_callback(lambda _: handle.cancel())
