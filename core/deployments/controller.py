"""The deployment controller: the one place that changes what a server serves, and records it.

One source of truth, by mode:

- **static** (no ``[server] state``): ``ladle.toml`` and the model repository decide what is served;
  the control API only reads. Change config and restart to change what is served.
- **managed** (``[server] state = "deployments.db"``): the deployment store decides. On the first
  start (an empty store) the config and repository seed it; from then on config no longer chooses
  versions or traffic: deployments, traffic splits, routers and resilience settings come from the
  store, and change only through the control API, each change one transaction. A restart restores
  every deployed version, split, router and running rollout exactly.

Every change follows the same order: validate, load and warm what is new (with no traffic), record
the change in the store, then swap the routing table (one assignment). A request is routed either
by the table before a change or the one after, and a version leaves the table before it drains.

The concepts it draws on live beside it: the history (``events``), which router a split needs
(``router_policy``), guarded rollouts (``rollout_runner``, ``rollout``), restoring and seeding the
store (``restore``), the delivery stages of each model (``delivery``), and what it answers about a
model (``views``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import ServerConfig
from ..errors import ClientError, InvalidRequestError, LadleError, ModelNotFoundError, RuntimeFailureError
from ..options import validation_error
from ..repository import ModelPlan, check_name, version_key
from ..routing import RoutingTable
from ..serving import ModelEndpoint, ModelManager
from ..splits import normalise_weights
from .delivery import Delivery
from .errors import ConflictError
from .events import EventLog
from .resilience import ResiliencePolicy
from .resources import DeploymentResources, check_gpu, parse_resources, stored_resources
from .restore import StoreSync, config_resilience, message_of
from .rollout import GuardedRollout, RolloutPlan
from .rollout_runner import RolloutRunner, rollout_record
from .router_policy import RouterChoice, RouterPolicy, current_split, scaled, version_status, write_split
from .store import DeploymentStore, RolloutRecord, Transaction
from .views import DeploymentViews

if TYPE_CHECKING:
    from ..fronts import FrontLink
    from ..scaling_loop import ScalingLoop

__all__ = ["DeploymentController", "DeploymentFailedError", "DeploymentOptions", "RouterChoice"]

logger = logging.getLogger(__name__)


class DeploymentFailedError(ClientError):
    """The version exists but could not be loaded or warmed; nothing changed."""

    status = 422
    code = "deployment_failed"


class DeploymentOptions(BaseModel):
    """``options`` of ``POST /api/v1/deployments``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout: RolloutPlan | None = None
    router: RouterChoice | None = None
    resilience: ResiliencePolicy | None = None


class DeploymentController(RolloutRunner, StoreSync, DeploymentViews):
    """Deploys versions, shifts traffic, rolls back and runs guarded rollouts for one server."""

    def __init__(self, manager: ModelManager, config: ServerConfig | None = None) -> None:
        self.manager = manager
        self.config = config or manager.config
        self.managed = self.config.server.state is not None
        self.store: DeploymentStore | None = None
        self.deliveries: dict[str, Delivery] = {}
        self.rollouts: dict[str, GuardedRollout] = {}
        self.router_policy = RouterPolicy(manager.host)
        self.events = EventLog(
            lambda: self.store,
            self._commit,
            lambda: ((model, delivery.breakers) for model, delivery in self.deliveries.items()),
        )
        self._locks: dict[str, asyncio.Lock] = {}
        #: The other fronts of ``ladle serve --workers N`` (``ladle.fronts``): a follower front
        #: follows the store and relays every change to the writer front, which applies it.
        self.front: FrontLink | None = None
        #: The server's scaling loop (``ladle.scaling_loop``): replicas per version, ``scale``.
        self.scaling: ScalingLoop | None = None
        self._deploying: dict[tuple[str, str], float] = {}

    # lifecycle ---------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "managed" if self.managed else "static"

    @property
    def state_path(self) -> Path | None:
        state = self.config.server.state
        if state is None:
            return None
        path = Path(state)
        return path if path.is_absolute() else self.config.base_dir / path

    def open_store(self) -> None:
        """Open the store now (``ConfigError`` if it is corrupt or unwritable); ``start`` does it too."""
        path = self.state_path
        if path is not None and self.store is None:
            self.store = DeploymentStore.open(path)

    async def start(self, plans: list[ModelPlan] | None = None) -> None:
        """Load what the source of truth says, then attach delivery stages and resume rollouts.

        Static mode and a managed first start load ``plans`` (default: the repository's); a managed
        restart loads what the store lists instead.
        """
        self.open_store()
        for plan in plans if plans is not None else []:
            self._check_resilience(plan.name, config_resilience(plan.config))
        store = self.store
        try:
            if self.front is not None and self.front.follower:
                await self.front.follow(plans)
            elif store is not None and not await asyncio.to_thread(store.is_empty):
                await self._restore(store)
                await self._restore_replicas(store)
            else:
                await self.manager.load_all(plans)
                if store is not None:
                    await self._seed()
        finally:
            self.manager.loading = False
        for endpoint in list(self.manager.models.values()):
            self._sync_delivery(endpoint)
        self.events.start()

    async def close(self) -> None:
        """Stop rollouts (they resume at the next start) and background work; close the store."""
        tasks = [task for rollout in self.rollouts.values() if (task := rollout.detach()) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.front is not None:
            await self.front.close()
        await self.events.close()
        for delivery in self.deliveries.values():
            await delivery.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    # the control API ------------------------------------------------------------------------

    def _lock(self, model: str) -> asyncio.Lock:
        lock = self._locks.get(model)
        if lock is None:
            lock = self._locks[model] = asyncio.Lock()
        return lock

    def _require_managed(self) -> None:
        if not self.managed:
            raise ConflictError(
                "this server runs in static mode: ladle.toml and the model repository decide what is served; "
                'set [server] state = "deployments.db" to manage deployments through the API',
                mode="static",
            )

    async def deploy(
        self,
        model: str,
        version: str,
        traffic: float | None = None,
        options: DeploymentOptions | Mapping[str, Any] | None = None,
        resources: DeploymentResources | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Load and warm ``version`` (if it is not loaded yet), then give it traffic.

        Without a rollout the version gets ``traffic`` percent (default 100) and the versions that
        served scale down in proportion; with ``options.rollout`` it starts at the first step and a
        guarded rollout takes it from there. ``resources`` (``ladle.deployments.resources``): the
        GPU kind it needs (409 on a machine without one) and its replicas.
        """
        self._require_managed()
        if self.front is not None and self.front.follower:
            raw = options
            if isinstance(options, BaseModel):
                raw = options.model_dump(exclude_none=True, mode="json")
            payload = {"model": model, "version": version, "traffic": traffic, "options": raw or {}}
            if resources is not None:
                payload["resources"] = (
                    resources.model_dump(exclude_none=True) if isinstance(resources, BaseModel) else resources
                )
            return await self.front.relay("POST", "/api/v1/deployments", payload)
        check_name("model", model)
        check_name("version", version)
        parsed = _parse_options(options)
        wanted = parse_resources(dict(resources) if isinstance(resources, Mapping) else resources)
        if traffic is not None and (isinstance(traffic, bool) or not 0 <= float(traffic) <= 100):
            raise InvalidRequestError(f"traffic must be a percent from 0 to 100, got {traffic!r}")
        async with self._lock(model):
            if model in self.rollouts and self.rollouts[model].state == "running":
                raise ConflictError(
                    f"model {model!r} has a rollout in progress; roll it back or wait for it to finish",
                    rollout=self.rollouts[model].describe(),
                )
            self.manager.repository.version_dir(model, version)  # 404 before loading anything
            if wanted is not None and wanted.gpu is not None:
                check_gpu(wanted.gpu)  # 409 naming the GPUs this machine has
            # Everything that can be checked is checked before a version loads.
            endpoint = self.manager.models.get(model)
            current = current_split(endpoint) if endpoint is not None else {}
            stable = max((v for v in current if v != version), key=lambda v: current[v], default=None)
            if parsed.rollout is not None:
                if stable is None:
                    raise ConflictError(
                        "a guarded rollout compares the canary with a version that serves traffic; "
                        f"model {model!r} has none besides the canary",
                    )
                first = parsed.rollout.steps[0]
                weights = {stable: 100.0 - first, version: first} if first < 100 else {version: 100.0}
            else:
                weights = scaled(current, version, 100.0 if traffic is None else float(traffic))
            choice = (
                self.router_policy.choose(endpoint, parsed.router, weights, version)
                if endpoint is not None
                else None
            )
            replicas = wanted.replicas if wanted is not None else None
            if endpoint is None or version not in endpoint.versions:
                await self.events.record(model, "loading", f"loading version {version!r}", version=version)
                self._deploying[(model, version)] = time.time()
                try:
                    await self._load(model, version, replicas)
                except DeploymentFailedError as exc:
                    await self._commit_failed_load(model, version, exc)
                    raise
                finally:
                    self._deploying.pop((model, version), None)
                endpoint = self.manager.models[model]
            elif replicas is not None and self.scaling is not None:
                await self.scaling.scale(model, version, replicas)
            if choice is None:  # a model new to this server: its router is known once it loaded
                choice = self.router_policy.choose(endpoint, parsed.router, weights, version)
            router, router_name, router_options = choice
            resilience = parsed.resilience
            version_options = parsed.model_dump(exclude_none=True, mode="json")
            kept = endpoint.versions[version].requested
            if wanted is not None or kept is not None:
                version_options["resources"] = {
                    **({"replicas": kept} if kept is not None else {}),
                    **(wanted.model_dump(exclude_none=True) if wanted is not None else {}),
                }

            def write(tx: Transaction) -> None:
                tx.upsert_model(
                    model,
                    router=router_name if router is not None else None,
                    router_options=router_options,
                    options={"resilience": resilience.model_dump(mode="json")}
                    if resilience is not None
                    else None,
                )
                status = version_status(version, weights, None)
                tx.upsert_deployment(model, version, status=status, options=version_options, deployed=True)
                write_split(tx, model, current, weights, f"deploy {version}")
                tx.event(
                    model,
                    "deployed",
                    f"version {version!r} deployed",
                    version=version,
                    details={"traffic": weights, "options": version_options},
                )
                if parsed.rollout is not None and stable is not None:
                    tx.save_rollout(
                        RolloutRecord(
                            model,
                            version,
                            stable,
                            parsed.rollout.model_dump(mode="json"),
                            0,
                            "running",
                            "",
                            tx.now,
                            tx.now,
                        )
                    )

            await self._commit(write)
            if router is not None:
                endpoint.set_router(router, router_name)
            if resilience is not None:
                self._delivery(endpoint).configure(resilience)
            self._publish(endpoint, weights)
            if parsed.rollout is not None and stable is not None:
                self._begin_rollout(endpoint, version, stable, parsed.rollout, 0, time.time())
        return await self.describe(model)

    async def set_traffic(self, model: str, weights: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the split (percent per loaded version, summing to 100); cancels a running rollout."""
        self._require_managed()
        if self.front is not None and self.front.follower:
            return await self.front.relay("PUT", f"/api/v1/deployments/{quote(model)}/traffic", weights)
        endpoint = self.manager.endpoint(model)
        if not isinstance(weights, Mapping):
            raise InvalidRequestError(
                'traffic must be an object of version -> percent, e.g. {"v1": 90, "v2": 10}'
            )
        async with self._lock(model):
            split = normalise_weights(weights, sorted(endpoint.versions, key=version_key))
            router, router_name, _ = self.router_policy.choose(endpoint, None, split)
            rollout = self.rollouts.get(model)
            cancelled = rollout is not None and rollout.state == "running"
            if rollout is not None and cancelled:
                await rollout.cancel("cancelled by a manual traffic change")

            before = current_split(endpoint)

            def write(tx: Transaction) -> None:
                if router is not None:
                    tx.upsert_model(model, router=router_name, router_options={})
                write_split(tx, model, before, split, "traffic change")
                tx.event(
                    model, "traffic", f"traffic changed to {_split_text(split)}", details={"traffic": split}
                )
                if rollout is not None and cancelled:
                    tx.save_rollout(rollout_record(rollout, tx.now))
                    tx.event(model, "rollout_cancelled", rollout.reason, version=rollout.canary)

            await self._commit(write)
            if router is not None:
                endpoint.set_router(router, router_name)
            self._publish(endpoint, split)
            if cancelled:
                self._end_rollout(endpoint)
        return await self.describe(model)

    async def rollback(self, model: str, to: str | None = None) -> dict[str, Any]:
        """All traffic back to ``to`` or, by default, to the version that last served alone before
        the most recently deployed one. The versions that lose their traffic are marked rolled back."""
        self._require_managed()
        if self.front is not None and self.front.follower:
            body = {"version": to} if to is not None else {}
            return await self.front.relay("POST", f"/api/v1/deployments/{quote(model)}/rollback", body)
        endpoint = self.manager.endpoint(model)
        async with self._lock(model):
            rollout = self.rollouts.get(model)
            running = rollout is not None and rollout.state == "running"
            target = to if to is not None else (rollout.stable if rollout is not None and running else None)
            if target is None:
                target = await self._rollback_target(model)
            check_name("version", target)
            if target not in endpoint.versions:
                self.manager.repository.version_dir(model, target)
                await self._load(model, target)
            if rollout is not None and running:
                await rollout.cancel(f"rolled back by request to {target!r}")
                rollout.state = "rolled_back"
            await self._apply_rollback(
                endpoint, target, "rollback requested", rollout if running else None, {}
            )
        return await self.describe(model)

    async def retire(self, model: str, version: str) -> dict[str, Any]:
        """Unload a version that has no traffic (it stays in the repository and the history)."""
        self._require_managed()
        if self.front is not None and self.front.follower:
            path = f"/api/v1/deployments/{quote(model)}/versions/{quote(version)}"
            return await self.front.relay("DELETE", path)
        endpoint = self.manager.endpoint(model)
        async with self._lock(model):
            if version not in endpoint.versions:
                raise ModelNotFoundError(f"model {model!r} has no loaded version {version!r}", model=model)
            if current_split(endpoint).get(version, 0) > 0:
                raise ConflictError(
                    f"version {version!r} still has traffic; move it away first", version=version
                )
            rollout = self.rollouts.get(model)
            if (
                rollout is not None
                and rollout.state == "running"
                and version in (rollout.canary, rollout.stable)
            ):
                raise ConflictError(f"version {version!r} is part of a running rollout", version=version)

            def write(tx: Transaction) -> None:
                tx.set_status(model, version, "retired")
                tx.event(model, "retired", f"version {version!r} unloaded", version=version)

            await self._commit(write)
            await self.manager.unload_version(model, version)
            delivery = self.deliveries.get(model)
            if delivery is not None:
                delivery.forget_version(version)
        return await self.describe(model)

    async def unload(self, model: str) -> dict[str, Any]:
        """Take every version of a model out of routing, record it, then drain and unload them
        (the Triton repository extension's unload). Refused (409) while a guarded rollout runs."""
        self._require_managed()
        if self.front is not None and self.front.follower:
            return await self.front.relay("POST", f"/v2/repository/models/{quote(model)}/unload")
        manager = self.manager
        endpoint = manager.endpoint(model)
        async with self._lock(model):
            rollout = self.rollouts.get(model)
            if rollout is not None and rollout.state == "running":
                raise ConflictError(
                    f"model {model!r} has a rollout in progress; roll it back before unloading the model",
                    rollout=rollout.describe(),
                )
            versions = sorted(endpoint.versions, key=version_key)
            before = current_split(endpoint)

            def write(tx: Transaction) -> None:
                write_split(tx, model, before, {}, "model unloaded")
                for version in versions:
                    tx.set_status(model, version, "retired")
                tx.event(
                    model,
                    "unloaded",
                    f"model {model!r} unloaded (versions {', '.join(versions) or 'none'})",
                    details={"versions": versions, "traffic": {}, "previous_traffic": before},
                )

            await self._commit(write)
            endpoint.set_table(RoutingTable(model, ()))  # no request is routed to it from here on
            for version in versions:
                await manager.unload_version(model, version)
            manager.forget_model(model)
            delivery = self.deliveries.pop(model, None)
            if delivery is not None:
                await delivery.close()
        return {"name": model, "unloaded": versions}

    async def scale(self, model: str, version: str, replicas: int) -> dict[str, Any]:
        """Set a version's replicas at runtime (``ladle scale``): its instance count under the fixed
        policy, its floor under an autoscaling one. Returns once the instances are ready or drained.

        Allowed in static mode too: it changes how many instances serve, not what is served. In
        managed mode the count is recorded with the deployment, so a restart keeps it.
        """
        if self.front is not None and self.front.follower:
            path = f"/api/v1/deployments/{quote(model)}/versions/{quote(version)}/replicas"
            return await self.front.relay("PUT", path, {"replicas": replicas})
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 256:
            raise InvalidRequestError(f"replicas must be an integer from 0 to 256, got {replicas!r}")
        endpoint = self.manager.endpoint(model)
        endpoint.loaded(version)  # 404 naming the loaded versions
        scaling = self.scaling
        if scaling is None:
            raise ConflictError("this server runs no scaling loop: replicas cannot change at runtime")
        async with self._lock(model):
            store = self.store
            if store is not None:
                records = {r.version: r for r in await asyncio.to_thread(store.deployments, model)}
                record = records.get(version)
                options = dict(record.options) if record is not None else {}
                options["resources"] = {**dict(options.get("resources") or {}), "replicas": replicas}
                split = current_split(endpoint)
                status = record.status if record is not None else version_status(version, split, None)

                def write(tx: Transaction) -> None:
                    tx.upsert_model(model)
                    tx.upsert_deployment(model, version, status=status, options=options)

                await self._commit(write)
            await scaling.scale(model, version, replicas)
        return await self.describe(model)

    async def _restore_replicas(self, store: DeploymentStore) -> None:
        """Give restored versions the replicas their deployments recorded."""
        if self.scaling is None:
            return
        for record in await asyncio.to_thread(store.deployments):
            wanted = stored_resources(record.options)
            endpoint = self.manager.models.get(record.model)
            if wanted is None or wanted.replicas is None or endpoint is None:
                continue
            if record.version in endpoint.versions:
                await self.scaling.scale(record.model, record.version, wanted.replicas)

    # helpers ------------------------------------------------------------------------------------

    async def _load(self, model: str, version: str, instances: int | None = None) -> None:
        """Load and warm a version with no traffic; ``DeploymentFailedError`` (422) if it cannot."""
        try:
            await self.manager.load_version(model, version, traffic=False, instances=instances)
        except Exception as exc:
            endpoint = self.manager.models.get(model)
            if endpoint is not None and not endpoint.versions:
                del self.manager.models[model]  # a model whose only version failed: not served at all
            raise DeploymentFailedError(
                f"version {version!r} of model {model!r} failed to load: {message_of(exc)}",
                model=model,
                version=version,
            ) from None

    def _publish(self, endpoint: ModelEndpoint, weights: Mapping[str, float]) -> None:
        """Swap in the new routing table (and forget cached answers of the old split)."""
        delivery = self.deliveries.get(endpoint.name)
        if delivery is not None and delivery.cache is not None:
            delivery.cache.clear()
        self.manager.publish(endpoint.name, {v: w for v, w in weights.items() if w > 0})
        self._sync_delivery(endpoint)

    def _delivery(self, endpoint: ModelEndpoint) -> Delivery:
        delivery = self.deliveries.get(endpoint.name)
        if delivery is None:
            delivery = self.deliveries[endpoint.name] = Delivery(endpoint, self.manager.endpoint)
        return delivery

    def _sync_delivery(self, endpoint: ModelEndpoint) -> None:
        """Install the delivery stages the model needs now (none: the plain path)."""
        delivery = self.deliveries.get(endpoint.name)
        if delivery is None:
            router = endpoint.router
            policy = self._configured_resilience(endpoint)
            if policy.empty and router.shadow_settings() is None and not type(router).escalates:
                endpoint.set_stages(())
                return
            delivery = self._delivery(endpoint)
            delivery.configure(policy)
        endpoint.set_stages(delivery.stages())

    def _configured_resilience(self, endpoint: ModelEndpoint) -> ResiliencePolicy:
        raw = config_resilience(endpoint.config)
        if self.store is not None:
            record = self.store.model(endpoint.name)
            if record is not None and "resilience" in record.options:
                raw = record.options["resilience"]
        return self._check_resilience(endpoint.name, raw)

    @staticmethod
    def _check_resilience(model: str, raw: Mapping[str, Any] | None) -> ResiliencePolicy:
        try:
            return ResiliencePolicy.model_validate(dict(raw or {}))
        except ValidationError as exc:
            raise validation_error(f"resilience of model {model!r}", exc) from None

    async def _commit(self, write: Callable[[Transaction], None]) -> None:
        store = self.store
        if store is None:
            return

        def run() -> None:
            with store.transaction() as tx:
                write(tx)

        try:
            await asyncio.to_thread(run)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        except Exception as exc:
            logger.exception("deployment store %s: a change could not be recorded", store.path)
            raise RuntimeFailureError(
                "the deployment store could not record the change, so it was not applied "
                f"({type(exc).__name__}; the server log has the details)"
            ) from exc

    async def _commit_failed_load(self, model: str, version: str, error: LadleError) -> None:
        def write(tx: Transaction) -> None:
            tx.upsert_model(model)
            tx.upsert_deployment(model, version, status="failed")
            tx.event(model, "load_failed", error.message, version=version)

        await self._commit(write)


# module helpers -------------------------------------------------------------------------------------


def _parse_options(options: DeploymentOptions | Mapping[str, Any] | None) -> DeploymentOptions:
    if isinstance(options, DeploymentOptions):
        return options
    try:
        return DeploymentOptions.model_validate(dict(options or {}))
    except ValidationError as exc:
        error = validation_error("options", exc)
        raise InvalidRequestError(error.message, problems=error.details.get("problems", [])) from None


def _split_text(split: Mapping[str, float]) -> str:
    return ", ".join(f"{version} {weight:g}%" for version, weight in split.items())
