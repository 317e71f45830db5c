"""The supervisor: failed instances are replaced, crash loops back off, and a server that can no
longer recover says so.

An instance *fails* when its worker process dies (noticed by the batch that was running, or by the
supervisor's poll of ``Instance.check`` for a worker killed between batches), when its executor
raises ``InstanceFailedError``, or when it overruns its deadlines ``max_overruns`` batches in a row
(``ladle.batch_watch``). Its version's ``ReplicaControl`` takes it out of the replica set at once;
the supervisor then counts the failure and decides when the replacement may start:

- the first failure of a version within its ``supervision.restart_window`` is replaced at once;
  every further one waits ``backoff`` seconds, doubling up to ``max_backoff`` (a replacement that
  fails to load or warm counts as a failure too);
- the replacement is built from the same spec through the version's placement, with the same index,
  loaded and warmed off the replica set, and joins it only once ready;
- a version with more than ``max_restarts`` failures in the window is *exhausted*: it is still
  retried every ``max_backoff`` seconds, and it recovers once a replacement serves again.

Failures a placement says are shared (``Placement.affected``: under MPS, every instance on the
failed one's GPU) fail those instances too. Instances the placement wants rebuilt
(``Placement.health``, ``Placement.take_moves``) are drained and created again, without counting as
failures. Every failure, replacement and backoff is an event of the model's deployment history and
counts in ``ladle_instance_restarts_total``.

**Liveness.** The server can no longer recover when some model has every version exhausted and no
ready instance: then ``/v2/health/live`` answers 503 (so an orchestrator restarts the process).
Replacing an instance, or a version scaled to zero, is not a liveness failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .instance import Instance
from .replica_control import ReplicaControl
from .scaling import Placement
from .telemetry.scaling import ScalingFigures

__all__ = ["EventSink", "Supervisor"]

logger = logging.getLogger("ladle.supervisor")

#: ``sink(model, kind, message, version=..., details=...)``: the deployment history (``EventLog.record``).
EventSink = Callable[..., Awaitable[None]]


@dataclass
class _History:
    """Failures of one version within its restart window."""

    failures: deque[float] = field(default_factory=deque)
    exhausted: bool = False
    restarts: int = 0

    def count(self, now: float, window: float) -> int:
        while self.failures and self.failures[0] < now - window:
            self.failures.popleft()
        return len(self.failures)


class Supervisor:
    """Implements ``ReplicaObserver`` for every served version's ``ReplicaControl`` (``controls``,
    by model and version, is the scaling loop's live mapping)."""

    def __init__(
        self,
        controls: Mapping[tuple[str, str], ReplicaControl],
        events: EventSink | None = None,
        figures: ScalingFigures | None = None,
    ) -> None:
        self.controls = controls
        self.events = events
        self.figures = figures
        self._history: dict[tuple[str, str], _History] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # what ReplicaControl tells it ------------------------------------------------------------------

    def instance_failed(self, control: ReplicaControl, instance: Instance) -> None:
        delay, failures = self._failure(control, "instance_failed")
        message = f"instance {instance.name} failed: {instance.error or 'unknown error'}; " + (
            f"replacing it in {delay:g} s ({failures} failures in the restart window)"
            if delay
            else "replacing it"
        )
        logger.warning("%s/%s %s", control.model, control.version, message)
        self._emit(control, "instance_failed", message, instance=instance.name, error=instance.error)
        self._schedule(control, delay)
        self._fail_affected(control, instance)

    def start_failed(
        self, control: ReplicaControl, index: int, error: BaseException, *, refused: bool
    ) -> None:
        text = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        if refused:  # the placement has no room: not a crash, the hold is the control's own
            self._emit(control, "scale_refused", f"instance {index} was refused: {text}", instance=str(index))
            return
        delay, failures = self._failure(control, "start_failed")
        self._emit(
            control,
            "start_failed",
            f"instance {index} failed to start: {text}; next attempt in {delay:g} s "
            f"({failures} failures in the restart window)",
            instance=str(index),
            error=text,
        )
        self._schedule(control, delay)

    def instance_started(self, control: ReplicaControl, instance: Instance, *, replacement: bool) -> None:
        history = self._history.get((control.model, control.version))
        if history is not None and history.exhausted:
            history.exhausted = False
            self._emit(control, "recovered", f"instance {instance.name} serves again; the version recovered")
        if replacement:
            self._emit(
                control,
                "instance_replaced",
                f"instance {instance.name} replaced; ready in {instance.start_seconds:.2f} s",
                instance=instance.name,
                start_seconds=round(instance.start_seconds, 3),
            )

    def _failure(self, control: ReplicaControl, reason: str) -> tuple[float, int]:
        """Count a failure; hold the version for its backoff; return (delay, failures in window)."""
        settings = control.endpoint.config.supervision
        now = time.monotonic()
        history = self._history.setdefault((control.model, control.version), _History())
        history.failures.append(now)
        history.restarts += 1
        failures = history.count(now, settings.restart_window)
        delay = 0.0 if failures == 1 else min(settings.max_backoff, settings.backoff * 2 ** (failures - 2))
        if failures > settings.max_restarts:
            delay = settings.max_backoff
            if not history.exhausted:
                history.exhausted = True
                self._emit(
                    control,
                    "restart_budget_exhausted",
                    f"{failures} failures in {settings.restart_window:g} s (max_restarts "
                    f"{settings.max_restarts}): still retrying every {delay:g} s",
                )
        if delay:
            control.hold(delay, f"crash loop: {failures} failures in {settings.restart_window:g} s")
        if self.figures is not None:
            self.figures.restarted(control.model, control.version, reason)
        return delay, failures

    def _schedule(self, control: ReplicaControl, delay: float) -> None:
        if delay <= 0:
            control.reconcile()
        else:
            asyncio.get_running_loop().call_later(delay, control.reconcile)

    # every tick ----------------------------------------------------------------------------------

    def poll(self, placements: Iterable[Placement]) -> None:
        """Notice workers that died between batches, and rebuild what placements ask for."""
        controls = self.controls
        for control in list(controls.values()):
            for instance in list(control.replicas.instances):
                instance.check()  # a lost one fails: its control and ``instance_failed`` take over
        for placement in placements:
            try:
                rebuild = [(key, "its shared service failed") for key in placement.health()]
                rebuild += [(move.key, f"moved: {move.reason}") for move in placement.take_moves()]
            except Exception:  # a placement's bookkeeping must not stop supervision
                logger.exception("placement %s failed to report its health", type(placement).__name__)
                continue
            for (model, version, index), because in rebuild:
                target = controls.get((model, version))
                if target is None:
                    continue
                for instance in list(target.replicas.instances):
                    if instance.name == str(index):
                        target.recycle(instance, because)

    def _fail_affected(self, control: ReplicaControl, instance: Instance) -> None:
        """Fail the instances a placement says share ``instance``'s failure."""
        if not instance.name.isdigit():
            return
        try:
            keys = control.endpoint.placement.affected(control.model, control.version, int(instance.name))
        except Exception:  # a placement's bookkeeping must not stop supervision
            logger.exception("placement %s failed to say what a failure affects", control.endpoint.placement)
            return
        for model, version, index in keys:
            other = self.controls.get((model, version))
            if other is None:
                continue
            for candidate in list(other.replicas.instances):
                if candidate.name == str(index) and candidate is not instance:
                    candidate.fail(
                        f"shares the failure of {control.model}/{control.version} instance {instance.name}"
                    )

    # reading -------------------------------------------------------------------------------------

    def describe(self, model: str, version: str) -> dict[str, Any]:
        history = self._history.get((model, version))
        return {
            "restarts": history.restarts if history is not None else 0,
            "exhausted": history.exhausted if history is not None else False,
        }

    def unrecoverable(self) -> list[str]:
        """Models whose every version is exhausted and has no ready instance."""
        by_model: dict[str, list[bool]] = {}
        for (model, version), control in list(self.controls.items()):
            history = self._history.get((model, version))
            lost = history is not None and history.exhausted and not control.ready
            by_model.setdefault(model, []).append(lost)
        return sorted(model for model, lost in by_model.items() if lost and all(lost))

    def forget(self, model: str, version: str) -> None:
        self._history.pop((model, version), None)

    # events --------------------------------------------------------------------------------------

    def _emit(self, control: ReplicaControl, kind: str, message: str, **details: Any) -> None:
        self.record(control.model, control.version, kind, message, details)

    def record(self, model: str, version: str, kind: str, message: str, details: dict[str, Any]) -> None:
        """Record an event in the model's deployment history, in the background."""
        sink = self.events
        if sink is None:
            return

        async def record() -> None:
            try:
                await sink(model, kind, message, version=version, details=details)
            except Exception:  # the history must never take supervision or scaling down
                logger.exception("could not record the %s event of %s/%s", kind, model, version)

        task = asyncio.get_running_loop().create_task(record())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for events still being recorded."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
