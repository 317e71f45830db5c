"""Changing a served version's instances: the one place the control path adds, removes and replaces
them (the scaling loop and the supervisor both come here).

- **Grow.** A new instance is created through the version's placement (``create(spec, index,
  config)``), loaded and warmed *off* the replica set (``ReplicaSet.pending`` counts it meanwhile)
  and joins the set once ready; the batcher sees ``replicas.changed`` and starts using it.
- **Shrink.** An instance leaves the set first (the batcher stops choosing it), then drains (its
  running batches finish) and stops, which gives its room back to the placement. Queued requests
  are the batcher's, never an instance's, so nothing is lost.
- **Replace.** An instance that fails leaves the set at once and is stopped in the background; the
  version then has fewer instances than its target and the next reconciliation starts a new one
  with the same index, unless the version is *held* (crash-loop backoff, or a placement that refused
  an instance) until ``hold_until``.

``reconcile`` is idempotent and synchronous (it only starts tasks), so the loop may call it every
tick. The data path is untouched: it reads the replica set, which only ever holds ready instances
(or draining ones briefly, before they leave).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LadleError
from .instance import Instance, StateListener
from .runtime import InstanceState

if TYPE_CHECKING:
    from .serving import VersionEndpoint

__all__ = ["ReplicaControl", "ReplicaObserver"]

logger = logging.getLogger("ladle.scaling")

#: Seconds a failed instance gets to stop (a hung thread may never let it).
FAILED_STOP_TIMEOUT = 30.0
#: Seconds a version waits before asking its placement again after a refusal.
REFUSED_HOLD = 30.0


class ReplicaObserver(Protocol):
    """Told what happens to a version's instances (the supervisor implements it)."""

    def instance_failed(self, control: ReplicaControl, instance: Instance) -> None:
        """A serving instance failed; it has left the replica set. Called synchronously."""

    def start_failed(
        self, control: ReplicaControl, index: int, error: BaseException, *, refused: bool
    ) -> None:
        """A new instance could not be created (``refused``: by the placement) or started."""

    def instance_started(self, control: ReplicaControl, instance: Instance, *, replacement: bool) -> None:
        """A new instance is ready and joined the replica set."""


def _message(error: BaseException) -> str:
    return error.message if isinstance(error, LadleError) else f"{type(error).__name__}: {error}"


class ReplicaControl:
    """The instances of one served version, and every change to them."""

    def __init__(
        self,
        endpoint: VersionEndpoint,
        observer: ReplicaObserver,
        *,
        drain_timeout: float,
        served: Callable[[], bool],
    ) -> None:
        self.endpoint = endpoint
        self.model = endpoint.model
        self.version = endpoint.version
        self.replicas = endpoint.replicas
        self.observer = observer
        self.drain_timeout = drain_timeout
        self.served = served
        #: The count the version should have (the scaling loop sets it).
        self.target = len(self.replicas.instances)
        #: No new instance starts before this ``time.monotonic()`` (and why).
        self.hold_until = 0.0
        self.held_because = ""
        self.last_start_seconds = 0.0
        self._starting: dict[int, tuple[asyncio.Task[None], float]] = {}
        self._draining: dict[Instance, asyncio.Task[None]] = {}
        self._retiring: set[str] = set()  # names of drained instances whose index is not free yet
        self._owed = 0  # failed instances not replaced yet
        self._closed = False
        self._listener: StateListener | None = None
        for instance in self.replicas.instances:
            self._listener = self._listener or instance.listener
            self.last_start_seconds = max(self.last_start_seconds, instance.start_seconds)
            self._adopt(instance)

    # reading -------------------------------------------------------------------------------------

    def live(self) -> list[Instance]:
        """Instances in the replica set that have not failed."""
        return [i for i in self.replicas.instances if i.state is not InstanceState.FAILED]

    @property
    def ready(self) -> int:
        return sum(1 for i in self.replicas.instances if i.ready)

    @property
    def starting(self) -> int:
        return len(self._starting)

    @property
    def busy(self) -> bool:
        """Whether a start or a drain is under way."""
        return bool(self._starting or self._draining)

    def describe(self) -> dict[str, Any]:
        held = self.hold_until > time.monotonic()
        return {
            "replicas": self.target,
            "ready_replicas": self.ready,
            "starting": self.starting,
            "draining": len(self._draining),
            "requested": self.endpoint.requested,
            "start_seconds": round(self.last_start_seconds, 3),
            "held": self.held_because if held else "",
            "held_for": round(self.hold_until - time.monotonic(), 3) if held else 0.0,
        }

    # changing ------------------------------------------------------------------------------------

    def set_target(self, count: int) -> None:
        """Aim for ``count`` instances (0 scales the version to zero) and reconcile."""
        self.target = max(0, count)
        self.reconcile()

    def hold(self, seconds: float, because: str) -> None:
        """Start no new instance for ``seconds`` (a longer hold already in place stays)."""
        until = time.monotonic() + seconds
        if until > self.hold_until:
            self.hold_until = until
            self.held_because = because

    def reconcile(self) -> None:
        """Start or retire instances until the count matches the target."""
        if self._closed:
            return
        live = self.live()
        have = len(live) + len(self._starting)
        self._owed = min(self._owed, max(0, self.target - have))
        if have < self.target and time.monotonic() >= self.hold_until:
            for _ in range(self.target - have):
                if not self._start_one():
                    break
        elif len(live) > self.target:
            # the newest first, idle ones before busy ones; starting instances that turn out to be
            # too many retire once ready (see ``_start``)
            victims = sorted(live, key=lambda i: (i.in_flight, -_index(i)))
            for instance in victims[: len(live) - self.target]:
                self._retire(instance)
        self._standby()

    def _standby(self) -> None:
        self.replicas.standby = self.target == 0 and not self.replicas.instances and not self._starting

    def _free_index(self) -> int:
        taken = {_index(i) for i in self.live()} | set(self._starting)
        taken |= {int(name) for name in self._retiring if name.isdigit()}
        index = 0
        while index in taken:
            index += 1
        return index

    def _start_one(self) -> bool:
        endpoint = self.endpoint
        index = self._free_index()
        try:
            instance = endpoint.placement.create(endpoint.spec, index, endpoint.config)
        except Exception as exc:  # the placement cannot take another instance (no room, say)
            self.hold(REFUSED_HOLD, f"placement refused instance {index}: {_message(exc)}")
            self.observer.start_failed(self, index, exc, refused=True)
            return False
        instance.listener = self._listener
        replacement = self._owed > 0
        if replacement:
            self._owed -= 1
        began = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._start(instance, index, replacement))
        self._starting[index] = (task, began)
        self.replicas.pending += 1
        self._estimate_ready()
        return True

    def _estimate_ready(self) -> None:
        estimate = self.last_start_seconds
        self.replicas.ready_at = (
            min(began for _, began in self._starting.values()) + estimate
            if estimate and self._starting
            else 0.0
        )

    async def _start(self, instance: Instance, index: int, replacement: bool) -> None:
        try:
            await instance.start()
        except BaseException as exc:
            self._started(index)
            if replacement:
                self._owed += 1  # still owed
            if isinstance(exc, asyncio.CancelledError):
                raise
            logger.warning("%s/%s instance %d failed to start: %s", self.model, self.version, index, exc)
            self.observer.start_failed(self, index, exc, refused=False)
            self._standby()
            return
        self._started(index)
        self.last_start_seconds = instance.start_seconds
        if self._closed or not self.served() or len(self.live()) >= self.target:
            self._drain(instance, 0.0)  # no longer wanted: it never joined
            self._standby()
            return
        self._adopt(instance)
        self.replicas.add(instance)
        self.replicas.standby = False
        self.observer.instance_started(self, instance, replacement=replacement)

    def _started(self, index: int) -> None:
        self._starting.pop(index, None)
        self.replicas.pending -= 1
        self._estimate_ready()

    def _adopt(self, instance: Instance) -> None:
        """Watch ``instance``: when it fails, it leaves the set and the observer hears of it."""
        previous = instance.listener

        def listen(changed: Instance, state: InstanceState) -> None:
            if previous is not None:
                previous(changed, state)
            if state is InstanceState.FAILED:
                self._failed(changed)

        instance.listener = listen

    def _failed(self, instance: Instance) -> None:
        if instance not in self.replicas.instances:
            return
        self.replicas.remove(instance)
        self._owed += 1
        self._drain(instance, FAILED_STOP_TIMEOUT)
        if not self._closed:
            self.observer.instance_failed(self, instance)
        self._standby()

    def _retire(self, instance: Instance) -> None:
        """Scale down: out of the set first, then drain and stop."""
        self.replicas.remove(instance)
        self._drain(instance, self.drain_timeout, keep_index=True)

    def _drain(self, instance: Instance, timeout: float, *, keep_index: bool = False) -> None:
        """Stop ``instance`` in the background; ``keep_index`` holds its index until it stopped (a
        failed instance's index is free at once: its replacement takes it, as placements expect)."""
        if keep_index:
            self._retiring.add(instance.name)

        async def stop() -> None:
            try:
                await asyncio.wait_for(
                    self.endpoint.batcher.release(instance, timeout), timeout + FAILED_STOP_TIMEOUT
                )
                await asyncio.wait_for(instance.stop(timeout), timeout + FAILED_STOP_TIMEOUT)
            except Exception as exc:  # a hung runtime thread may never stop; it must not stop us
                logger.warning(
                    "%s/%s instance %s did not stop cleanly: %s", self.model, self.version, instance.name, exc
                )
            finally:
                self._draining.pop(instance, None)
                self._retiring.discard(instance.name)

        self._draining[instance] = asyncio.get_running_loop().create_task(stop())

    def recycle(self, instance: Instance, because: str) -> None:
        """Rebuild ``instance`` (its placement moved it, or a service it shares failed): it drains
        and a new one is created in its place; not a failure of the version."""
        if instance not in self.replicas.instances:
            return
        logger.info("%s/%s instance %s is rebuilt: %s", self.model, self.version, instance.name, because)
        self.replicas.remove(instance)
        self._owed += 1
        self._drain(instance, self.drain_timeout)
        self.reconcile()

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until no start or drain is under way."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            tasks = [task for task, _ in self._starting.values()] + list(self._draining.values())
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Stop changing the version: cancel starts, wait for drains (the version stops its own)."""
        self._closed = True
        self.replicas.wake = None
        starting = [task for task, _ in self._starting.values()]
        for task in starting:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*starting, *self._draining.values(), return_exceptions=True)


def _index(instance: Instance) -> int:
    return int(instance.name) if instance.name.isdigit() else -1
