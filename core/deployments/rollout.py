"""Guarded rollouts: a canary steps up on a schedule while guards compare it with the stable version.

At each step below 100% the canary holds its share for at least ``interval`` seconds and until the
guards have enough samples (``guard.min_samples`` per version within ``guard.window``); a breach at
any moment rolls back at once. A step that has not gathered enough samples after ``max_wait``
seconds (when set) rolls back too: a canary nobody exercises is not shown to be healthy. Reaching
100% promotes the canary (the stable version no longer has traffic to be compared with). See
``ladle.deployments.guards`` for the tests.

In managed mode the rollout saves its progress to the deployment store every ``PERSIST_EVERY``
seconds and when it stops: the wall time its step began and the guards' samples. A restart resumes
the step where it was (time at the step counts from that start) and judges with the samples it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from itertools import pairwise
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .guards import GuardPolicy, Verdict, VersionSamples, decode_samples, encode_samples, judge
from .store import DeploymentStore, RolloutProgress

__all__ = ["PERSIST_EVERY", "GuardedRollout", "RolloutHost", "RolloutPlan"]

logger = logging.getLogger("ladle.deployments")

#: Seconds between two saves of a running rollout's progress.
PERSIST_EVERY = 2.0


class RolloutPlan(BaseModel):
    """The schedule and guards of a rollout (``options.rollout`` of a deployment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    interval: float = Field(default=60.0, ge=0, description="minimum seconds at each step below 100")
    check_every: float = Field(default=1.0, gt=0, description="seconds between judgements")
    max_wait: float | None = Field(
        default=None, gt=0, description="seconds a step may wait for enough samples; none: no limit"
    )
    guard: GuardPolicy = GuardPolicy()

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if not steps or steps[-1] != 100:
            raise ValueError("steps must end at 100")
        if any(not 0 < s <= 100 for s in steps) or any(b <= a for a, b in pairwise(steps)):
            raise ValueError("steps must increase strictly within (0, 100]")
        return steps


class RolloutHost(Protocol):
    """What a rollout needs from the controller."""

    #: Where progress is saved (``None``: static mode, nothing is kept).
    store: DeploymentStore | None

    async def rollout_step(self, rollout: GuardedRollout, percent: float) -> None:
        """Give the canary ``percent`` of the traffic (the stable version the rest) and record it."""

    async def rollout_breached(self, rollout: GuardedRollout, verdict: Verdict) -> None:
        """Roll back to the stable version and record why."""

    async def rollout_promoted(self, rollout: GuardedRollout) -> None:
        """Give the canary all traffic and make it the stable version."""

    async def rollout_stalled(self, rollout: GuardedRollout) -> None:
        """Roll back to the stable version: a step gathered too few samples within ``max_wait``."""

    async def rollout_failed(self, rollout: GuardedRollout, error: Exception) -> None:
        """The rollout could not go on (the traffic stays where it is); record why."""


class GuardedRollout:
    """One running rollout of one model (a task on the event loop)."""

    def __init__(
        self,
        host: RolloutHost,
        model: str,
        canary: str,
        stable: str,
        plan: RolloutPlan,
        samples: dict[str, VersionSamples],
        step: int = 0,
    ) -> None:
        self.host = host
        self.model = model
        self.canary = canary
        self.stable = stable
        self.plan = plan
        self.samples = samples
        self.step = step
        self.state = "running"
        self.reason = ""
        self.verdict: Verdict | None = None
        self.step_started = 0.0
        #: Wall time the rollout began (kept across restarts).
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._resumed_step_start: float | None = None  # wall time, from the store
        self._step_started_wall = 0.0
        self._saved = 0.0

    @property
    def percent(self) -> float:
        return self.plan.steps[min(self.step, len(self.plan.steps) - 1)]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rollout-{self.model}")

    async def cancel(self, reason: str) -> None:
        """Stop the rollout where it is (the caller sets the traffic it wants)."""
        if self.state == "running":
            self.state = "cancelled"
            self.reason = reason
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def detach(self) -> asyncio.Task[None] | None:
        """Take the task away without changing the state (the server stops; the rollout resumes
        at the next start)."""
        task, self._task = self._task, None
        return task

    async def wait(self) -> None:
        """Until the rollout ends (promoted, rolled back or cancelled)."""
        if self._task is not None:
            await asyncio.gather(asyncio.shield(self._task), return_exceptions=True)

    def judge(self) -> Verdict:
        window = self.plan.guard.window
        now = time.monotonic()
        verdict = judge(
            self.samples[self.canary].figures(window, now),
            self.samples[self.stable].figures(window, now),
            self.plan.guard,
        )
        self.verdict = verdict
        return verdict

    @property
    def step_started_at(self) -> float:
        """Wall time the current step began (kept across restarts)."""
        return self._step_started_wall

    async def resume(self) -> bool:
        """Take up the progress the store has for this rollout and step, if any (samples included)."""
        store = self.host.store
        if store is None:
            return False
        progress = await asyncio.to_thread(store.rollout_progress, self.model)
        if progress is None or progress.step != self.step:
            return False
        if abs(progress.started_at - self.started_at) > 1e-6:
            return False  # the progress of an earlier rollout of this model
        self._resumed_step_start = progress.step_started_at
        for version, (outcomes, labels) in decode_samples(progress.samples).items():
            if version in self.samples:
                self.samples[version].restore(outcomes, labels)
        return True

    def _progress(self) -> RolloutProgress | None:
        """What to save; ``None`` before the first step began (nothing to resume)."""
        step_started_at = self._resumed_step_start
        if step_started_at is None:
            if not self.step_started:
                return None
            step_started_at = self.step_started_at
        samples = encode_samples(self.samples, self.plan.guard.window)
        return RolloutProgress(self.model, self.started_at, self.step, step_started_at, samples, 0.0)

    def _write(self, store: DeploymentStore, progress: RolloutProgress | None) -> None:
        if progress is None:
            return
        record = store.rollout(self.model)
        if record is None or (record.canary, record.stable) != (self.canary, self.stable):
            return  # the store no longer holds this rollout
        # keyed by the store's own start time: that is what a restart resumes this rollout with
        progress = dataclasses.replace(progress, started_at=record.started_at)
        with store.transaction() as tx:
            tx.save_rollout_progress(progress)

    async def save_progress(self) -> None:
        """Save the step's start and the samples (a failed save is logged; the rollout goes on)."""
        store = self.host.store
        if store is None:
            return
        self._saved = time.monotonic()
        try:
            await asyncio.to_thread(self._write, store, self._progress())
        except Exception as exc:  # the store is closing or failing: the next save tries again
            logger.warning("rollout of %s: progress not saved: %s", self.model, exc)

    async def _run(self) -> None:
        try:
            await self.resume()
            await self._steps()
        except asyncio.CancelledError:
            store = self.host.store
            if self.state == "running" and store is not None:  # detached: the server stops
                with contextlib.suppress(Exception):
                    self._write(store, self._progress())
            raise
        except Exception as exc:
            self.state = "failed"
            self.reason = f"{type(exc).__name__}: {exc}"
            await self.host.rollout_failed(self, exc)

    async def _steps(self) -> None:
        steps = self.plan.steps
        while self.step < len(steps) and steps[self.step] < 100:
            await self.host.rollout_step(self, steps[self.step])
            self.step_started = time.monotonic()
            self._step_started_wall = time.time()
            if self._resumed_step_start is not None:  # a restart: the step began before it
                self.step_started -= max(0.0, self._step_started_wall - self._resumed_step_start)
                self._step_started_wall = self._resumed_step_start
                self._resumed_step_start = None
            await self.save_progress()
            while True:
                await asyncio.sleep(self.plan.check_every)
                verdict = self.judge()
                if time.monotonic() - self._saved >= PERSIST_EVERY:
                    await self.save_progress()
                if verdict.breaches:
                    self.state = "rolled_back"
                    self.reason = verdict.reason()
                    await self.host.rollout_breached(self, verdict)
                    return
                waited = time.monotonic() - self.step_started
                if verdict.healthy and waited >= self.plan.interval:
                    break
                if not verdict.ready and self.plan.max_wait is not None and waited >= self.plan.max_wait:
                    self.state = "rolled_back"
                    self.reason = (
                        f"not enough traffic: the {self.percent:g}% step gathered fewer than "
                        f"{self.plan.guard.min_samples} requests per version in {self.plan.max_wait:g} s"
                    )
                    await self.host.rollout_stalled(self)
                    return
            self.step += 1
        self.step = len(steps) - 1
        self.state = "promoted"
        await self.host.rollout_promoted(self)

    def describe(self) -> dict[str, Any]:
        return {
            "canary": self.canary,
            "stable": self.stable,
            "state": self.state,
            "step": self.step,
            "percent": self.percent,
            "steps": list(self.plan.steps),
            "interval": self.plan.interval,
            "max_wait": self.plan.max_wait,
            "reason": self.reason,
            "verdict": None
            if self.verdict is None
            else {
                "ready": self.verdict.ready,
                "breaches": [b.to_dict() for b in self.verdict.breaches],
                **self.verdict.figures,
            },
        }
