"""The controller's side of guarded rollouts: starting one, and applying what it decides.

A ``GuardedRollout`` (``ladle.deployments.rollout``) judges the canary step by step and calls back
here (its host): a step moves the split, a breach or a stall rolls back, the last step promotes. Each
decision is one store transaction, then one routing-table swap, under the model's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import LadleError
from .errors import ConflictError
from .guards import Verdict
from .rollout import GuardedRollout, RolloutPlan
from .router_policy import RouterPolicy, current_split, write_split
from .store import DeploymentStore, RolloutRecord, Transaction

if TYPE_CHECKING:
    from ..serving import ModelEndpoint, ModelManager
    from .delivery import Delivery

__all__ = ["RolloutRunner", "rollout_record", "verdict_details"]


def verdict_details(verdict: Verdict | None) -> dict[str, Any]:
    if verdict is None:
        return {}
    return {"breaches": [b.to_dict() for b in verdict.breaches], **verdict.figures}


def rollout_record(rollout: GuardedRollout, now: float) -> RolloutRecord:
    return RolloutRecord(
        rollout.model,
        rollout.canary,
        rollout.stable,
        rollout.plan.model_dump(mode="json"),
        rollout.step,
        rollout.state,
        rollout.reason,
        rollout.started_at or now,
        now,
    )


class RolloutRunner:
    """Mixed into the deployment controller: the ``RolloutHost`` protocol of ``GuardedRollout``."""

    manager: ModelManager
    store: DeploymentStore | None
    rollouts: dict[str, GuardedRollout]
    deliveries: dict[str, Delivery]
    router_policy: RouterPolicy

    # provided by the controller
    def _lock(self, model: str) -> asyncio.Lock:
        raise NotImplementedError

    async def _commit(self, write: Callable[[Transaction], None]) -> None:
        raise NotImplementedError

    def _publish(self, endpoint: ModelEndpoint, weights: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _delivery(self, endpoint: ModelEndpoint) -> Delivery:
        raise NotImplementedError

    def _sync_delivery(self, endpoint: ModelEndpoint) -> None:
        raise NotImplementedError

    # starting and ending -------------------------------------------------------------------------

    def _begin_rollout(
        self, endpoint: ModelEndpoint, canary: str, stable: str, plan: RolloutPlan, step: int, started: float
    ) -> GuardedRollout:
        delivery = self._delivery(endpoint)
        samples = delivery.watch([canary, stable], plan.guard.score_output)
        self._sync_delivery(endpoint)
        rollout = GuardedRollout(self, endpoint.name, canary, stable, plan, samples, step)
        rollout.started_at = started
        self.rollouts[endpoint.name] = rollout
        rollout.start()
        return rollout

    def _end_rollout(self, endpoint: ModelEndpoint) -> None:
        delivery = self.deliveries.get(endpoint.name)
        if delivery is not None:
            delivery.unwatch()
        self._sync_delivery(endpoint)

    async def _move_rollout(
        self,
        rollout: GuardedRollout,
        endpoint: ModelEndpoint,
        weights: dict[str, float],
        reason: str,
        event: str,
        message: str,
        details: dict[str, Any],
    ) -> None:
        """Record a rollout's new split (switching router where the split needs it), then publish it.
        The caller holds the model's lock."""
        before = current_split(endpoint)
        router, name, _ = self.router_policy.fit(endpoint, weights)

        def write(tx: Transaction) -> None:
            if router is not None:
                tx.upsert_model(rollout.model, router=name, router_options={})
            write_split(tx, rollout.model, before, weights, reason)
            tx.save_rollout(rollout_record(rollout, tx.now))
            tx.event(rollout.model, event, message, version=rollout.canary, details=details)

        await self._commit(write)
        if router is not None:
            endpoint.set_router(router, name)
        self._publish(endpoint, weights)

    # the RolloutHost protocol ----------------------------------------------------------------------

    async def rollout_step(self, rollout: GuardedRollout, percent: float) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        weights = {rollout.stable: 100.0 - percent, rollout.canary: percent}
        async with self._lock(rollout.model):
            if rollout.state != "running":
                return
            if current_split(endpoint) == weights:
                return  # resumed at a step that is already in place
            await self._move_rollout(
                rollout,
                endpoint,
                weights,
                f"rollout step {rollout.step + 1}",
                "rollout_step",
                f"canary {rollout.canary!r} at {percent:g}%",
                {"traffic": weights, "verdict": verdict_details(rollout.verdict)},
            )

    async def rollout_breached(self, rollout: GuardedRollout, verdict: Verdict) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        async with self._lock(rollout.model):
            await self._apply_rollback(
                endpoint,
                rollout.stable,
                f"guard breached: {verdict.reason()}",
                rollout,
                verdict_details(verdict),
            )

    async def rollout_stalled(self, rollout: GuardedRollout) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        async with self._lock(rollout.model):
            await self._apply_rollback(
                endpoint, rollout.stable, rollout.reason, rollout, verdict_details(rollout.verdict)
            )

    async def rollout_promoted(self, rollout: GuardedRollout) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        async with self._lock(rollout.model):
            await self._move_rollout(
                rollout,
                endpoint,
                {rollout.canary: 100.0},
                f"rollout of {rollout.canary} promoted",
                "promoted",
                f"canary {rollout.canary!r} promoted to 100%",
                {"verdict": verdict_details(rollout.verdict)},
            )
            self._end_rollout(endpoint)

    async def rollout_failed(self, rollout: GuardedRollout, error: Exception) -> None:
        endpoint = self.manager.models.get(rollout.model)
        if endpoint is not None:
            self._end_rollout(endpoint)

        def write(tx: Transaction) -> None:
            tx.save_rollout(rollout_record(rollout, tx.now))
            tx.event(rollout.model, "rollout_failed", rollout.reason, version=rollout.canary)

        with contextlib.suppress(LadleError):  # the store itself may be what failed
            await self._commit(write)

    # rolling back ----------------------------------------------------------------------------------

    async def _apply_rollback(
        self,
        endpoint: ModelEndpoint,
        target: str,
        reason: str,
        rollout: GuardedRollout | None,
        details: Mapping[str, Any],
    ) -> None:
        model = endpoint.name
        before = current_split(endpoint)
        weights = {target: 100.0}
        losing = [v for v, w in before.items() if w > 0 and v != target]
        router, name, _ = self.router_policy.fit(endpoint, weights)
        if rollout is not None:
            rollout.state = "rolled_back"
            rollout.reason = reason

        def write(tx: Transaction) -> None:
            if router is not None:
                tx.upsert_model(model, router=name, router_options={})
            write_split(tx, model, before, weights, f"rollback to {target}", losing)
            if rollout is not None:
                tx.save_rollout(rollout_record(rollout, tx.now))
            tx.event(
                model,
                "rolled_back",
                reason,
                version=target,
                details={"from": before, "to": weights, "rolled_back": losing, **details},
            )

        await self._commit(write)
        if router is not None:
            endpoint.set_router(router, name)
        self._publish(endpoint, weights)
        if rollout is not None:
            self._end_rollout(endpoint)

    async def _rollback_target(self, model: str) -> str:
        """The version that last served alone, other than the most recently deployed one in service."""
        if self.store is None:
            raise ConflictError("rollback needs managed mode")
        records = {d.version: d for d in await asyncio.to_thread(self.store.deployments, model)}
        serving = [d for d in records.values() if d.traffic > 0]
        newest = max(serving, key=lambda d: d.deployed_at).version if serving else None
        for split in await asyncio.to_thread(self.store.splits, model, 1000):
            whole = [v for v, w in split.weights.items() if w >= 100]
            if len(whole) != 1 or whole[0] == newest:
                continue
            record = records.get(whole[0])
            if record is not None and record.status not in ("rolled_back", "failed"):
                return whole[0]
        raise ConflictError(f"model {model!r} has no earlier version to roll back to", model=model)
