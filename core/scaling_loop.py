"""The scaling loop: every tick, each served version's policy says how many instances it wants.

Every ``interval`` seconds (0.5 by default) the loop

1. lets the supervisor poll (workers that died between batches; placements' rebuild requests);
2. reads each served version (``VersionMetrics``: ongoing requests from its batcher, windowed
   latencies and rates from the stats layer over the policy's ``window``, the count in effect,
   the config's and an operator's count);
3. asks the version's ``ScalingPolicy.desired`` and, when the answer differs from the count in
   effect, applies it through the version's ``ReplicaControl`` (new instances load and warm
   before they join; removed ones leave the set, drain and stop), counting a scale event with its
   direction and the policy's reason, and recording it in the model's deployment history.

A manual change (``scale``: the control API and ``ladle scale``) is the same operation: it sets
the version's requested count, which the fixed policy keeps and an autoscaling policy takes as its
floor, and then asks the policy at once.

A version scaled to zero is woken by its first request (``ReplicaSet.wake``): the policy is asked
there and then with that request counted, so the request waits for the new instance (bounded by
its deadline) instead of being refused. The data path carries no hook: ``wake`` runs only when a
request finds no live instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError, ModelNotFoundError
from .replica_control import ReplicaControl
from .scaling import VersionMetrics
from .supervisor import EventSink, Supervisor
from .telemetry.scaling import ScalingFigures
from .telemetry.slo import breached, slo_report

if TYPE_CHECKING:
    from .repository import ModelPlan
    from .serving import ModelManager, VersionEndpoint
    from .telemetry.stats import StatsRegistry

__all__ = ["MAX_INSTANCES", "ScalingLoop"]

logger = logging.getLogger("ladle.scaling")

#: The most instances one version may have (as ``instances`` in the config).
MAX_INSTANCES = 256


class ScalingLoop:
    """Owns the ``ReplicaControl`` of every served version, its supervisor and the tick."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        events: EventSink | None = None,
        stats: StatsRegistry | None = None,
        interval: float = 0.5,
    ) -> None:
        self.manager = manager
        self.events = events
        self.stats = stats
        self.interval = interval
        self.controls: dict[tuple[str, str], ReplicaControl] = {}
        self.figures = ScalingFigures(stats) if stats is not None else None
        self.supervisor = Supervisor(self.controls, events, self.figures)
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        manager.version_listeners.append(self.version_changed)

    def check(self, plans: list[ModelPlan]) -> None:
        """Build each planned model's policy once, so bad options fail at start (``ConfigError``)."""
        for plan in plans:
            self.manager.scaling_policy(plan.config)

    # versions ------------------------------------------------------------------------------------

    def version_changed(self, model: str, version: str, endpoint: VersionEndpoint | None) -> None:
        """The manager's version listener: take a ready version under control, or let one go."""
        key = (model, version)
        if endpoint is None:
            control = self.controls.pop(key, None)
            self.supervisor.forget(model, version)
            if control is not None:
                task = asyncio.get_running_loop().create_task(control.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return
        control = ReplicaControl(
            endpoint,
            self.supervisor,
            drain_timeout=self.manager.config.server.drain_timeout,
            served=lambda: self._served(endpoint),
        )
        endpoint.replicas.wake = lambda: self._wake(control)
        self.controls[key] = control
        if self.figures is not None:
            batcher = endpoint.batcher
            self.figures.register(
                model,
                version,
                ongoing=lambda: batcher.ongoing,
                desired=lambda: control.target,
                predicted_wait=batcher.predicted_wait,
            )

    def _served(self, endpoint: VersionEndpoint) -> bool:
        model = self.manager.models.get(endpoint.model)
        return model is not None and model.versions.get(endpoint.version) is endpoint

    def control(self, model: str, version: str) -> ReplicaControl:
        control = self.controls.get((model, version))
        if control is None:
            raise ModelNotFoundError(
                f"model {model!r} has no served version {version!r}", model=model, version=version
            )
        return control

    # the tick ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.tick()
            except Exception:  # one bad tick (a policy that raised) must not end scaling
                logger.exception("the scaling loop's tick failed")

    def tick(self) -> None:
        """One round: supervise, then ask every served version's policy."""
        self.supervisor.poll(list(self.manager.placements.values()))
        now = time.monotonic()
        for control in list(self.controls.values()):
            if not control.served():
                continue
            try:
                self._decide(control, now)
            except Exception:
                logger.exception("scaling policy of %s/%s failed", control.model, control.version)
            control.reconcile()

    def metrics(self, control: ReplicaControl, now: float, waiting: int = 0) -> VersionMetrics:
        """A reading of one version (``waiting``: requests to count beyond its queue)."""
        endpoint = control.endpoint
        batcher = endpoint.batcher
        policy = endpoint.policy
        window = None
        if self.stats is not None and policy is not None:
            window = self.stats.window(control.model, control.version, min(policy.window, self.stats.horizon))
        return VersionMetrics(
            model=control.model,
            version=control.version,
            instances=control.target,
            queue_depth=batcher.queue_depth + waiting,
            in_flight=batcher.in_flight,
            request_rate=window.request_rate if window is not None else 0.0,
            p95_latency=(window.latency_p95 or 0.0) if window is not None else 0.0,
            error_ratio=window.error_ratio if window is not None else 0.0,
            ready_instances=control.ready,
            p99_latency=window.latency_p99 if window is not None else None,
            configured=endpoint.config.instances,
            requested=endpoint.requested,
            now=now,
            slo_breached=self._breached(control, policy.window if policy is not None else 60.0),
        )

    def _breached(self, control: ReplicaControl, window: float) -> tuple[str, ...]:
        slo = control.endpoint.config.latency_slo
        if slo is None or self.stats is None:
            return ()
        return breached(slo_report(self.stats, control.model, control.version, slo, window))

    def _decide(self, control: ReplicaControl, now: float, waiting: int = 0, reason: str = "") -> int:
        policy = control.endpoint.policy
        if policy is None:
            return control.target
        policy.reason = ""
        desired = max(0, min(MAX_INSTANCES, int(policy.desired(self.metrics(control, now, waiting)))))
        before = control.target
        if desired != before:
            direction = "up" if desired > before else "down"
            why = reason or policy.reason or "policy"
            control.set_target(desired)
            if self.figures is not None:
                self.figures.scaled(control.model, control.version, direction, why)
            logger.info(
                "%s/%s scales %s: %d -> %d (%s)",
                control.model,
                control.version,
                direction,
                before,
                desired,
                why,
            )
            self.supervisor.record(
                control.model,
                control.version,
                "scaled",
                f"desired instances {before} -> {desired} ({why})",
                {"from": before, "to": desired, "direction": direction, "reason": why},
            )
        return desired

    def _wake(self, control: ReplicaControl) -> bool:
        """A request found no live instance: ask the policy now, counting it. Whether one starts."""
        if self._task is None or not control.served() or time.monotonic() < control.hold_until:
            return False
        try:
            self._decide(control, time.monotonic(), waiting=1)
        except Exception:
            logger.exception("scaling policy of %s/%s failed", control.model, control.version)
            return False
        return control.replicas.pending > 0

    # manual changes ------------------------------------------------------------------------------

    async def scale(self, model: str, version: str, replicas: int, *, wait: float = 600.0) -> dict[str, Any]:
        """Set a version's requested count (``ladle scale``) and apply it; returns once its instances
        are ready or drained (or after ``wait`` seconds) with ``describe``."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_INSTANCES:
            raise InvalidRequestError(
                f"replicas must be an integer from 0 to {MAX_INSTANCES}, got {replicas!r}", replicas=replicas
            )
        control = self.control(model, version)
        control.endpoint.requested = replicas
        self._decide(control, time.monotonic(), reason="manual")
        await control.settled(wait)
        return self.describe(model, version)

    # reading -------------------------------------------------------------------------------------

    def describe(self, model: str, version: str) -> dict[str, Any]:
        """``replicas`` (desired), ``ready_replicas``, starting and draining counts, the requested
        count, any hold (crash-loop backoff), restarts and the policy's name."""
        control = self.control(model, version)
        return {
            **control.describe(),
            **self.supervisor.describe(model, version),
            "scaling": control.endpoint.config.scaling.name,
            "draining_version": not control.served(),
        }

    def unrecoverable(self) -> list[str]:
        """Models that can no longer recover (see ``ladle.supervisor``): liveness fails on them."""
        return self.supervisor.unrecoverable()

    # lifecycle -----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the tick and every version's changes (the manager stops the versions themselves)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closing = [control.close() for control in self.controls.values()]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)
        await self.supervisor.close()
