"""Seeding the deployment store on a managed server's first start, and restoring from it after.

On the first start the config and repository loaded; what they loaded becomes the store's first
state. On every later start the store decides: each version it lists as loaded is loaded again,
with the model's router, split and running rollout as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import MODEL_CONFIG_FILE, ServerConfig, merge_model_config
from ..errors import LadleError
from ..repository import version_key
from .rollout import RolloutPlan
from .router_policy import RouterPolicy, current_split
from .store import DeploymentStore, RolloutRecord, Transaction

if TYPE_CHECKING:
    from ..serving import ModelEndpoint, ModelManager
    from .events import EventLog
    from .rollout import GuardedRollout

__all__ = ["StoreSync", "config_resilience", "message_of"]

#: Statuses of versions that were loaded when the store last changed (restored at start).
LOADED = frozenset({"serving", "standby", "rolled_back"})


def message_of(error: BaseException) -> str:
    return error.message if isinstance(error, LadleError) else f"{type(error).__name__}: {error}"


def config_resilience(config: Any) -> dict[str, Any]:
    """The ``resilience`` table of a model's config (empty when it has none)."""
    value = config.resilience
    return dict(value) if isinstance(value, Mapping) else {}


class StoreSync:
    """Mixed into the deployment controller: seed the store, or restore from it."""

    manager: ModelManager
    config: ServerConfig
    events: EventLog
    router_policy: RouterPolicy

    async def _commit(self, write: Callable[[Transaction], None]) -> None:
        raise NotImplementedError

    def _begin_rollout(
        self, endpoint: ModelEndpoint, canary: str, stable: str, plan: RolloutPlan, step: int, started: float
    ) -> GuardedRollout:
        raise NotImplementedError

    async def _seed(self) -> None:
        """Record what config and repository loaded as the store's first state."""
        models = list(self.manager.models.values())

        def write(tx: Transaction) -> None:
            for endpoint in models:
                config = endpoint.config
                resilience = config_resilience(config)
                tx.upsert_model(
                    endpoint.name,
                    router=config.router.name,
                    router_options=config.router.options,
                    options={"resilience": resilience} if resilience else {},
                )
                weights = current_split(endpoint)
                for version in endpoint.versions:
                    status = "serving" if weights.get(version, 0) > 0 else "standby"
                    tx.upsert_deployment(endpoint.name, version, status=status, deployed=True)
                if weights:
                    tx.set_split(endpoint.name, weights, "seeded from config")
                tx.event(
                    endpoint.name,
                    "seeded",
                    "state seeded from config and repository",
                    details={"traffic": weights},
                )
            for key, message in self.manager.failures.items():
                model, _, version = key.partition("/")
                tx.event(model, "load_failed", message, version=version)

        await self._commit(write)

    async def _restore(self, store: DeploymentStore) -> None:
        """Load every version the store lists as loaded, then restore routers, splits and rollouts."""
        self.manager.loading = True
        for record in await asyncio.to_thread(store.models):
            name = record.name
            deployments = [d for d in await asyncio.to_thread(store.deployments, name) if d.status in LOADED]
            try:
                config = merge_model_config(
                    self.config, name, self.manager.repository.model_dir(name) / MODEL_CONFIG_FILE
                )
            except LadleError as exc:
                self.manager.failures[name] = exc.message
                await self.events.record(name, "restore_failed", exc.message)
                continue
            endpoint: ModelEndpoint | None = None
            for deployment in sorted(deployments, key=lambda d: version_key(d.version)):
                try:
                    spec = self.manager.repository.spec(name, deployment.version, config, self.manager.host)
                    await self.manager.load_version(
                        name, deployment.version, spec, endpoint=endpoint, traffic=False
                    )
                    endpoint = self.manager.models[name]
                except Exception as exc:  # one broken version must not keep the others from serving
                    message = message_of(exc)
                    self.manager.failures[f"{name}/{deployment.version}"] = message
                    await self.events.record(name, "restore_failed", message, version=deployment.version)
            endpoint = self.manager.models.get(name)
            if endpoint is None:
                continue
            if record.router is not None:
                try:
                    endpoint.set_router(
                        self.router_policy.build(record.router, record.router_options), record.router
                    )
                except LadleError as exc:
                    await self.events.record(name, "restore_failed", f"router: {exc.message}")
            split = {
                d.version: d.traffic for d in deployments if d.traffic > 0 and d.version in endpoint.versions
            }
            self.manager.publish(name, split)
            await self.events.record(
                name, "restored", "state restored from the store", details={"traffic": split}
            )
            rollout = await asyncio.to_thread(store.rollout, name)
            if rollout is not None and rollout.state == "running":
                if rollout.canary in endpoint.versions and rollout.stable in endpoint.versions:
                    self._begin_rollout(
                        endpoint,
                        rollout.canary,
                        rollout.stable,
                        RolloutPlan.model_validate(rollout.plan),
                        rollout.step,
                        rollout.started_at,
                    )
                else:
                    reason = "a version of the rollout failed to restore"
                    cancelled = RolloutRecord(
                        name,
                        rollout.canary,
                        rollout.stable,
                        rollout.plan,
                        rollout.step,
                        "cancelled",
                        reason,
                        rollout.started_at,
                        rollout.updated_at,
                    )

                    def write(
                        tx: Transaction, cancelled: RolloutRecord = cancelled, reason: str = reason
                    ) -> None:
                        tx.save_rollout(cancelled)
                        tx.event(cancelled.model, "rollout_cancelled", reason, version=cancelled.canary)

                    await self._commit(write)

    # the control API ------------------------------------------------------------------------
