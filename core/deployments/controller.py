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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import MODEL_CONFIG_FILE, ServerConfig, merge_model_config, validation_error
from ..errors import (
    ClientError,
    ConfigError,
    InvalidRequestError,
    LadleError,
    ModelNotFoundError,
    PluginError,
    RuntimeFailureError,
)
from ..repository import ModelPlan, check_name, version_key
from ..routing import Router
from ..serving import ModelEndpoint, ModelManager
from .delivery import Delivery
from .errors import ConflictError, UnknownRequestError
from .guards import Verdict
from .resilience import ResiliencePolicy
from .rollout import GuardedRollout, RolloutPlan
from .split import normalise_weights
from .store import DeploymentStore, EventRecord, RolloutRecord, Transaction

__all__ = ["DeploymentController", "DeploymentFailedError", "DeploymentOptions", "RouterChoice"]

#: Routers that serve one version only; a split switches such a model to ``canary``.
_SINGLE_VERSION_ROUTERS = frozenset({"single"})
#: Statuses of versions that were loaded when the store last changed (restored at start).
_LOADED = frozenset({"serving", "standby", "rolled_back"})


class DeploymentFailedError(ClientError):
    """The version exists but could not be loaded or warmed; nothing changed."""

    status = 422
    code = "deployment_failed"


class RouterChoice(BaseModel):
    """A router plugin by name, with its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DeploymentOptions(BaseModel):
    """``options`` of ``POST /api/v1/deployments``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout: RolloutPlan | None = None
    router: RouterChoice | None = None
    resilience: ResiliencePolicy | None = None


def _now_iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class DeploymentController:
    """Deploys versions, shifts traffic, rolls back and runs guarded rollouts for one server."""

    def __init__(self, manager: ModelManager, config: ServerConfig | None = None) -> None:
        self.manager = manager
        self.config = config or manager.config
        self.managed = self.config.server.state is not None
        self.store: DeploymentStore | None = None
        self.deliveries: dict[str, Delivery] = {}
        self.rollouts: dict[str, GuardedRollout] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._memory_events: deque[EventRecord] = deque(maxlen=1000)
        self._router_names: dict[str, str] = {}
        self._event_ids = 0
        self._monitor: asyncio.Task[None] | None = None

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
        """Load what the source of truth says, then attach data-path extras and resume rollouts.

        Static mode and a managed first start load ``plans`` (default: the repository's); a managed
        restart loads what the store lists instead.
        """
        self.open_store()
        for plan in plans if plans is not None else []:
            self._check_resilience(plan.name, _config_resilience(plan.config))
        store = self.store
        try:
            if store is not None and not await asyncio.to_thread(store.is_empty):
                await self._restore(store)
            else:
                await self.manager.load_all(plans)
                if store is not None:
                    await self._seed()
        finally:
            self.manager.loading = False
        for endpoint in list(self.manager.models.values()):
            self._sync_delivery(endpoint)
        self._monitor = asyncio.get_running_loop().create_task(self._watch_breakers())

    async def close(self) -> None:
        """Stop rollouts (they resume at the next start) and background work; close the store."""
        tasks = [rollout.detach() for rollout in self.rollouts.values()]
        if self._monitor is not None:
            tasks.append(self._monitor)
            self._monitor = None
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._drain_breaker_events()
        for delivery in self.deliveries.values():
            await delivery.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    async def _seed(self) -> None:
        """Record what config and repository loaded as the store's first state."""
        models = list(self.manager.models.values())

        def write(tx: Transaction) -> None:
            for endpoint in models:
                config = endpoint.config
                resilience = _config_resilience(config)
                tx.upsert_model(
                    endpoint.name,
                    router=config.router.name,
                    router_options=config.router.options,
                    options={"resilience": resilience} if resilience else {},
                )
                weights = _traffic(endpoint)
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
            deployments = [d for d in await asyncio.to_thread(store.deployments, name) if d.status in _LOADED]
            try:
                config = merge_model_config(
                    self.config, name, self.manager.repository.model_dir(name) / MODEL_CONFIG_FILE
                )
            except LadleError as exc:
                self.manager.failures[name] = exc.message
                await self._event(name, "restore_failed", exc.message)
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
                    message = _message(exc)
                    self.manager.failures[f"{name}/{deployment.version}"] = message
                    await self._event(name, "restore_failed", message, version=deployment.version)
            endpoint = self.manager.models.get(name)
            if endpoint is None:
                continue
            if record.router is not None:
                try:
                    self._set_router(
                        endpoint, self._build_router(record.router, record.router_options), record.router
                    )
                except LadleError as exc:
                    await self._event(name, "restore_failed", f"router: {exc.message}")
            split = {
                d.version: d.traffic for d in deployments if d.traffic > 0 and d.version in endpoint.versions
            }
            self.manager.publish(name, split)
            await self._event(name, "restored", "state restored from the store", details={"traffic": split})
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
    ) -> dict[str, Any]:
        """Load and warm ``version`` (if it is not loaded yet), then give it traffic.

        Without a rollout the version gets ``traffic`` percent (default 100) and the versions that
        served scale down in proportion; with ``options.rollout`` it starts at the first step and a
        guarded rollout takes it from there.
        """
        self._require_managed()
        check_name("model", model)
        check_name("version", version)
        parsed = _parse_options(options)
        if traffic is not None and (isinstance(traffic, bool) or not 0 <= float(traffic) <= 100):
            raise InvalidRequestError(f"traffic must be a percent from 0 to 100, got {traffic!r}")
        async with self._lock(model):
            if model in self.rollouts and self.rollouts[model].state == "running":
                raise ConflictError(
                    f"model {model!r} has a rollout in progress; roll it back or wait for it to finish",
                    rollout=self.rollouts[model].describe(),
                )
            self.manager.repository.version_dir(model, version)  # 404 before loading anything
            # Everything that can be checked is checked before a version loads.
            endpoint = self.manager.models.get(model)
            current = _traffic(endpoint) if endpoint is not None else {}
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
                weights = _scaled(current, version, 100.0 if traffic is None else float(traffic))
            choice = (
                self._choose_router(endpoint, parsed.router, weights, version)
                if endpoint is not None
                else None
            )
            if endpoint is None or version not in endpoint.versions:
                await self._event(model, "loading", f"loading version {version!r}", version=version)
                try:
                    await self._load(model, version)
                except DeploymentFailedError as exc:
                    await self._commit_failed_load(model, version, exc)
                    raise
                endpoint = self.manager.models[model]
            if choice is None:  # a model new to this server: its router is known once it loaded
                choice = self._choose_router(endpoint, parsed.router, weights, version)
            router, router_name, router_options = choice
            resilience = parsed.resilience
            version_options = parsed.model_dump(exclude_none=True, mode="json")

            def write(tx: Transaction) -> None:
                tx.upsert_model(
                    model,
                    router=router_name if router is not None else None,
                    router_options=router_options,
                    options={"resilience": resilience.model_dump(mode="json")}
                    if resilience is not None
                    else None,
                )
                status = _status(version, weights, None)
                tx.upsert_deployment(model, version, status=status, options=version_options, deployed=True)
                _write_split(tx, model, current, weights, f"deploy {version}")
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
                self._set_router(endpoint, router, router_name)
            if resilience is not None:
                self._delivery(endpoint).configure(resilience)
            self._publish(endpoint, weights)
            if parsed.rollout is not None and stable is not None:
                self._begin_rollout(endpoint, version, stable, parsed.rollout, 0, time.time())
        return await self.describe(model)

    async def set_traffic(self, model: str, weights: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the split (percent per loaded version, summing to 100); cancels a running rollout."""
        self._require_managed()
        endpoint = self.manager.endpoint(model)
        if not isinstance(weights, Mapping):
            raise InvalidRequestError(
                'traffic must be an object of version -> percent, e.g. {"v1": 90, "v2": 10}'
            )
        async with self._lock(model):
            split = normalise_weights(weights, sorted(endpoint.versions, key=version_key))
            router = self._router_for(endpoint, split)
            _check_weights(router or endpoint.router, split)
            rollout = self.rollouts.get(model)
            cancelled = rollout is not None and rollout.state == "running"
            if rollout is not None and cancelled:
                await rollout.cancel("cancelled by a manual traffic change")

            before = _traffic(endpoint)

            def write(tx: Transaction) -> None:
                if router is not None:
                    tx.upsert_model(model, router="canary", router_options={})
                _write_split(tx, model, before, split, "traffic change")
                tx.event(model, "traffic", "traffic changed", details={"traffic": split})
                if rollout is not None and cancelled:
                    tx.save_rollout(_rollout_record(rollout, tx.now))
                    tx.event(model, "rollout_cancelled", rollout.reason, version=rollout.canary)

            await self._commit(write)
            if router is not None:
                self._set_router(endpoint, router, "canary")
            self._publish(endpoint, split)
            if cancelled:
                self._end_rollout(endpoint)
        return await self.describe(model)

    async def rollback(self, model: str, to: str | None = None) -> dict[str, Any]:
        """All traffic back to ``to`` or, by default, to the version that last served alone before
        the most recently deployed one. The versions that lose their traffic are marked rolled back."""
        self._require_managed()
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
        endpoint = self.manager.endpoint(model)
        async with self._lock(model):
            if version not in endpoint.versions:
                raise ModelNotFoundError(f"model {model!r} has no loaded version {version!r}", model=model)
            if _traffic(endpoint).get(version, 0) > 0:
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
                delivery.breakers.pop(version, None)
        return await self.describe(model)

    def feedback(self, model: str, request_id: str, label: Any) -> dict[str, Any]:
        """Record the true label of a served request, for the accuracy guard of a running rollout."""
        self.manager.endpoint(model)
        delivery = self.deliveries.get(model)
        predictions = delivery.predictions if delivery is not None else None
        if delivery is None or predictions is None or delivery.samples is None:
            return {"recorded": False, "reason": f"no rollout of model {model!r} is judging accuracy now"}
        entry = predictions.pop(request_id, None)
        if entry is None:
            raise UnknownRequestError(
                f"request {request_id!r} of model {model!r} is unknown or too old for feedback",
                request_id=request_id,
            )
        version, predicted = entry
        try:
            labels = np.asarray(label).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidRequestError("label must be a value or a list with one value per row") from None
        if labels.size == 1 and predicted.size > 1:
            labels = np.repeat(labels, predicted.size)
        if labels.shape != predicted.shape or labels.dtype.kind not in "iufb":
            raise InvalidRequestError(
                f"label must be a number or {predicted.size} numbers (one per row)", rows=int(predicted.size)
            )
        correct = int(np.count_nonzero(labels == predicted))
        samples = delivery.samples.get(version)
        if samples is not None:
            samples.record_label(correct, int(predicted.size))
        return {
            "recorded": samples is not None,
            "version": version,
            "correct": correct,
            "rows": int(predicted.size),
        }

    # reads --------------------------------------------------------------------------------------

    async def describe(self, model: str, *, history: bool = True, limit: int = 50) -> dict[str, Any]:
        """The state of one model: traffic, versions, router, rollout, data-path figures, history."""
        endpoint = self.manager.models.get(model)
        store = self.store
        records = await asyncio.to_thread(store.deployments, model) if store is not None else []
        if endpoint is None and not records:
            check_name("model", model)
            raise ModelNotFoundError(
                f"model {model!r} is not deployed", model=model, available=sorted(self.manager.models)
            )
        traffic = _traffic(endpoint) if endpoint is not None else {}
        versions: dict[str, dict[str, Any]] = {}
        for record in records:
            versions[record.version] = {
                "version": record.version,
                "status": record.status,
                "traffic": traffic.get(record.version, 0.0),
                "loaded": endpoint is not None and record.version in endpoint.versions,
                "ready": bool(
                    endpoint
                    and record.version in endpoint.versions
                    and endpoint.versions[record.version].ready
                ),
                "deployed_at": _now_iso(record.deployed_at),
                "options": record.options,
            }
        if endpoint is not None:
            for version, served in endpoint.versions.items():
                versions.setdefault(
                    version,
                    {
                        "version": version,
                        "status": _status(version, traffic, None),
                        "traffic": traffic.get(version, 0.0),
                        "loaded": True,
                        "ready": served.ready,
                    },
                )
        rollout = self.rollouts.get(model)
        described: dict[str, Any] = {
            "name": model,
            "mode": self.mode,
            "router": self._router_name(endpoint) if endpoint is not None else None,
            "traffic": traffic,
            "versions": sorted(versions.values(), key=lambda v: version_key(v["version"])),
            "rollout": rollout.describe() if rollout is not None else None,
        }
        if rollout is None and store is not None:
            saved = await asyncio.to_thread(store.rollout, model)
            if saved is not None:
                described["rollout"] = {
                    "canary": saved.canary,
                    "stable": saved.stable,
                    "state": saved.state,
                    "step": saved.step,
                    "reason": saved.reason,
                }
        delivery = self.deliveries.get(model)
        if delivery is not None:
            described["delivery"] = delivery.describe()
        if history:
            described["history"] = await self.history(model, limit)
        return described

    async def describe_all(self) -> dict[str, Any]:
        names = set(self.manager.models)
        if self.store is not None:
            names.update(m.name for m in await asyncio.to_thread(self.store.models))
        return {
            "mode": self.mode,
            "models": [await self.describe(name, history=False) for name in sorted(names)],
        }

    async def history(self, model: str, limit: int = 50) -> dict[str, Any]:
        await self._drain_breaker_events()
        if self.store is not None:
            splits = await asyncio.to_thread(self.store.splits, model, limit)
            events = await asyncio.to_thread(self.store.events, model, limit)
        else:
            splits = []
            events = [e for e in reversed(self._memory_events) if e.model == model][:limit]
        return {
            "splits": [
                {"at": _now_iso(s.created_at), "traffic": s.weights, "reason": s.reason} for s in splits
            ],
            "events": [
                {
                    "at": _now_iso(e.created_at),
                    "kind": e.kind,
                    "version": e.version,
                    "message": e.message,
                    "details": e.details,
                }
                for e in events
            ],
        }

    # rollouts (the RolloutHost protocol) ---------------------------------------------------------

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
        """Record a rollout's new split (switching to ``canary`` where needed), then publish it.
        The caller holds the model's lock."""
        before = _traffic(endpoint)
        fit = self._router_for(endpoint, weights)

        def write(tx: Transaction) -> None:
            if fit is not None:
                tx.upsert_model(rollout.model, router="canary", router_options={})
            _write_split(tx, rollout.model, before, weights, reason)
            tx.save_rollout(_rollout_record(rollout, tx.now))
            tx.event(rollout.model, event, message, version=rollout.canary, details=details)

        await self._commit(write)
        if fit is not None:
            self._set_router(endpoint, fit, "canary")
        self._publish(endpoint, weights)

    async def rollout_step(self, rollout: GuardedRollout, percent: float) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        weights = {rollout.stable: 100.0 - percent, rollout.canary: percent}
        async with self._lock(rollout.model):
            if rollout.state != "running":
                return
            if _traffic(endpoint) == weights:
                return  # resumed at a step that is already in place
            await self._move_rollout(
                rollout,
                endpoint,
                weights,
                f"rollout step {rollout.step + 1}",
                "rollout_step",
                f"canary {rollout.canary!r} at {percent:g}%",
                {"traffic": weights, "verdict": _verdict(rollout.verdict)},
            )

    async def rollout_breached(self, rollout: GuardedRollout, verdict: Verdict) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        async with self._lock(rollout.model):
            await self._apply_rollback(
                endpoint, rollout.stable, f"guard breached: {verdict.reason()}", rollout, _verdict(verdict)
            )

    async def rollout_stalled(self, rollout: GuardedRollout) -> None:
        endpoint = self.manager.endpoint(rollout.model)
        async with self._lock(rollout.model):
            await self._apply_rollback(
                endpoint, rollout.stable, rollout.reason, rollout, _verdict(rollout.verdict)
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
                {"verdict": _verdict(rollout.verdict)},
            )
            self._end_rollout(endpoint)

    async def rollout_failed(self, rollout: GuardedRollout, error: Exception) -> None:
        endpoint = self.manager.models.get(rollout.model)
        if endpoint is not None:
            self._end_rollout(endpoint)

        def write(tx: Transaction) -> None:
            tx.save_rollout(_rollout_record(rollout, tx.now))
            tx.event(rollout.model, "rollout_failed", rollout.reason, version=rollout.canary)

        with contextlib.suppress(LadleError):  # the store itself may be what failed
            await self._commit(write)

    async def _apply_rollback(
        self,
        endpoint: ModelEndpoint,
        target: str,
        reason: str,
        rollout: GuardedRollout | None,
        details: Mapping[str, Any],
    ) -> None:
        model = endpoint.name
        before = _traffic(endpoint)
        weights = {target: 100.0}
        losing = [v for v, w in before.items() if w > 0 and v != target]
        fit = self._router_for(endpoint, weights)
        if rollout is not None:
            rollout.state = "rolled_back"
            rollout.reason = reason

        def write(tx: Transaction) -> None:
            if fit is not None:
                tx.upsert_model(model, router="canary", router_options={})
            _write_split(tx, model, before, weights, f"rollback to {target}", losing)
            if rollout is not None:
                tx.save_rollout(_rollout_record(rollout, tx.now))
            tx.event(
                model,
                "rolled_back",
                reason,
                version=target,
                details={"from": before, "to": weights, "rolled_back": losing, **details},
            )

        await self._commit(write)
        if fit is not None:
            self._set_router(endpoint, fit, "canary")
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

    # helpers ------------------------------------------------------------------------------------

    async def _load(self, model: str, version: str) -> None:
        """Load and warm a version with no traffic; ``DeploymentFailedError`` (422) if it cannot."""
        try:
            await self.manager.load_version(model, version, traffic=False)
        except Exception as exc:
            endpoint = self.manager.models.get(model)
            if endpoint is not None and not endpoint.versions:
                del self.manager.models[model]  # a model whose only version failed: not served at all
            raise DeploymentFailedError(
                f"version {version!r} of model {model!r} failed to load: {_message(exc)}",
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
        """Attach the model's ``Delivery`` to its endpoint only while something needs it."""
        delivery = self.deliveries.get(endpoint.name)
        if delivery is None:
            policy = self._configured_resilience(endpoint)
            needs_router = bool(getattr(endpoint.router, "emits_shadows", False)) or callable(
                getattr(endpoint.router, "escalate", None)
            )
            if policy.empty and not needs_router:
                endpoint.delivery = None
                return
            delivery = self._delivery(endpoint)
            delivery.configure(policy)
        endpoint.delivery = delivery if delivery.needed else None

    def _configured_resilience(self, endpoint: ModelEndpoint) -> ResiliencePolicy:
        raw = _config_resilience(endpoint.config)
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

    def _build_router(self, name: str, options: Mapping[str, Any]) -> Router:
        try:
            factory = self.manager.host.load("router", name)
            router: Router = factory(dict(options))
        except (ConfigError, PluginError) as exc:
            raise InvalidRequestError(f"router {name!r}: {exc.message}", router=name) from None
        return router

    def _router_name(self, endpoint: ModelEndpoint) -> str:
        return self._router_names.get(endpoint.name, endpoint.config.router.name)

    def _set_router(self, endpoint: ModelEndpoint, router: Router, name: str) -> None:
        endpoint.router = router  # one assignment: the data path sees the old router or the new one
        self._router_names[endpoint.name] = name

    def _choose_router(
        self,
        endpoint: ModelEndpoint,
        chosen: RouterChoice | None,
        weights: Mapping[str, float],
        extra: str | None = None,
    ) -> tuple[Router | None, str, dict[str, Any]]:
        """The router a deployment asks for (else ``_router_for``; ``None``: keep the current one),
        checked against ``weights``."""
        if chosen is not None:
            router: Router | None = self._build_router(chosen.name, chosen.options)
            name, options = chosen.name, chosen.options
        else:
            router, name, options = self._router_for(endpoint, weights, extra), "canary", {}
        _check_weights(router or endpoint.router, weights)
        return router, name, options

    def _router_for(
        self, endpoint: ModelEndpoint, weights: Mapping[str, float], extra: str | None = None
    ) -> Router | None:
        """A canary router when the model's router serves only the latest version and ``weights``
        (with ``extra`` loaded too) give traffic to anything else; ``None`` when it can stay."""
        if self._router_name(endpoint) not in _SINGLE_VERSION_ROUTERS:
            return None
        loaded = sorted({*endpoint.versions, *([extra] if extra else [])}, key=version_key)
        live = [v for v, w in weights.items() if w > 0]
        if loaded and live != [loaded[-1]]:
            return self._build_router("canary", {})
        return None

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
            raise RuntimeFailureError(
                f"deployment store {store.path}: the change could not be recorded and was not applied: {exc}"
            ) from exc

    async def _event(
        self,
        model: str,
        kind: str,
        message: str,
        *,
        version: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if self.store is not None:
            await self._commit(lambda tx: tx.event(model, kind, message, version=version, details=details))
        else:
            self._event_ids += 1
            self._memory_events.append(
                EventRecord(self._event_ids, model, version, kind, message, dict(details or {}), time.time())
            )

    async def _commit_failed_load(self, model: str, version: str, error: LadleError) -> None:
        def write(tx: Transaction) -> None:
            tx.upsert_model(model)
            tx.upsert_deployment(model, version, status="failed")
            tx.event(model, "load_failed", error.message, version=version)

        await self._commit(write)

    def _breaker_events(self) -> list[tuple[str, str, float, str, str]]:
        """Take the circuit-breaker transitions the data path noted (on the event loop's thread)."""
        pending: list[tuple[str, str, float, str, str]] = []
        for model, delivery in self.deliveries.items():
            for version, breaker in delivery.breakers.items():
                if breaker.transitions:
                    moved, breaker.transitions = breaker.transitions, []
                    pending.extend((model, version, at, state.value, why) for at, state, why in moved)
        return pending

    def _write_breaker_events(self, pending: list[tuple[str, str, float, str, str]]) -> None:
        if not pending:
            return
        if self.store is not None:
            with self.store.transaction() as tx:
                for model, version, _, state, why in pending:
                    tx.event(model, f"circuit_{state}", why, version=version)
            return
        for model, version, at, state, why in pending:
            self._event_ids += 1
            self._memory_events.append(
                EventRecord(self._event_ids, model, version, f"circuit_{state}", why, {}, at)
            )

    async def _drain_breaker_events(self) -> None:
        """Move circuit-breaker transitions into the event history."""
        pending = self._breaker_events()
        if pending:
            await asyncio.to_thread(self._write_breaker_events, pending)

    async def _watch_breakers(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._drain_breaker_events()
            except Exception:  # the history must never take the server down
                continue


# module helpers -------------------------------------------------------------------------------------


def _parse_options(options: DeploymentOptions | Mapping[str, Any] | None) -> DeploymentOptions:
    if isinstance(options, DeploymentOptions):
        return options
    try:
        return DeploymentOptions.model_validate(dict(options or {}))
    except ValidationError as exc:
        error = validation_error("options", exc)
        raise InvalidRequestError(error.message, problems=error.details.get("problems", [])) from None


def _message(error: BaseException) -> str:
    return error.message if isinstance(error, LadleError) else f"{type(error).__name__}: {error}"


def _config_resilience(config: Any) -> dict[str, Any]:
    # ModelConfig may grow a ``resilience`` table; until then there is nothing to read.
    value = getattr(config, "resilience", None)
    return dict(value) if isinstance(value, Mapping) else {}


def _traffic(endpoint: ModelEndpoint) -> dict[str, float]:
    """The effective split of an endpoint: its table's weights, or 100 to the latest."""
    table = endpoint.table
    if table.weights:
        live = {v: float(w) for v, w in table.weights.items() if w > 0 and v in table.versions}
        if live:
            return live
    return {table.versions[-1]: 100.0} if table.versions else {}


def _scaled(current: Mapping[str, float], version: str, share: float) -> dict[str, float]:
    """``version`` at ``share`` percent; the others keep their proportions within the rest."""
    others = {v: w for v, w in current.items() if v != version and w > 0}
    rest = 100.0 - share
    total = sum(others.values())
    if rest > 0 and total <= 0:
        raise ConflictError(
            f"no other version serves the remaining {rest:g}% of the traffic; deploy with traffic 100",
        )
    weights = {v: w * rest / total for v, w in others.items()} if rest > 0 else {}
    weights[version] = share
    return {v: round(w, 6) for v, w in weights.items() if w > 0}


def _status(version: str, weights: Mapping[str, float], rolled_back: list[str] | None) -> str:
    if weights.get(version, 0) > 0:
        return "serving"
    if rolled_back and version in rolled_back:
        return "rolled_back"
    return "standby"


def _write_split(
    tx: Transaction,
    model: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
    reason: str,
    rolled_back: list[str] | None = None,
) -> None:
    """Record a new split; versions that gain traffic serve, those that lose it stand by (or are
    marked rolled back); the status of the others stays as it was."""
    for version in set(before) | set(after):
        if (before.get(version, 0) > 0) != (after.get(version, 0) > 0) or version in (rolled_back or ()):
            tx.upsert_deployment(model, version, status=_status(version, after, rolled_back))
    tx.set_split(model, {v: w for v, w in after.items() if w > 0}, reason)


def _check_weights(router: Router, weights: Mapping[str, float]) -> None:
    check = getattr(router, "check_weights", None)
    if callable(check):
        check(weights)


def _verdict(verdict: Verdict | None) -> dict[str, Any]:
    if verdict is None:
        return {}
    return {"breaches": [b.to_dict() for b in verdict.breaches], **verdict.figures}


def _rollout_record(rollout: GuardedRollout, now: float) -> RolloutRecord:
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
