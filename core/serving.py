"""Served models: one ``ModelEndpoint`` per model, one ``VersionEndpoint`` per served version.

The ``ModelManager`` is the control path's handle on them: it plans models from the repository and
config, builds batchers, routers and placements through the plugin host, loads and warms versions,
swaps routing tables atomically and unloads versions. The data path only calls
``ModelEndpoint.submit``, which routes and queues without touching a hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .batching import Batcher, BatchObserver, ReplicaSet, enforce_deadline
from .config import DEFAULT_BATCHER, ModelConfig, ServerConfig
from .envelope import Arrays, InferenceRequest
from .errors import ConfigError, LadleError, ModelNotFoundError, ModelNotReadyError
from .instance import Instance
from .plugin_host import PluginHost
from .repository import ModelPlan, ModelRepository, check_name
from .routing import Router, RoutingTable
from .runtime import InstanceState, RuntimeSpec
from .scaling import Placement
from .tensors import Signature

if TYPE_CHECKING:
    from .deployments.delivery import Delivery

__all__ = ["ModelEndpoint", "ModelManager", "ObserverFactory", "VersionEndpoint", "VersionListener"]

logger = logging.getLogger("ladle.serving")

#: Makes the per-version batch observer (the telemetry layer provides one); ``None`` observes nothing.
ObserverFactory = Callable[[str, str], BatchObserver | None]
#: Progress callback: (model, version, instance state or a phase name).
Progress = Callable[[str, str, str], None]
#: Called with a version endpoint once it is ready, and with ``(model, version, None)`` once removed.
VersionListener = Callable[[str, str, "VersionEndpoint | None"], None]


class VersionEndpoint:
    """One served version: its replica set, batcher and signature."""

    def __init__(
        self,
        spec: RuntimeSpec,
        config: ModelConfig,
        replicas: ReplicaSet,
        batcher: Batcher,
        placement: Placement,
    ) -> None:
        self.model = spec.model
        self.version = spec.version
        self.spec = spec
        self.config = config
        self.replicas = replicas
        self.batcher = batcher
        self.placement = placement
        self.signature: Signature | None = None
        self.loaded_at = 0.0
        #: Optional check of a request's inputs before it queues (raises a 4xx ``LadleError``).
        self.input_checks: Callable[[Arrays], None] | None = None

    @property
    def ready(self) -> bool:
        return self.replicas.any_ready

    async def start(self, instances: int, listener: Callable[[Instance, InstanceState], None] | None) -> None:
        """Create, load and warm ``instances`` instances, then start the batcher."""
        created = [self.placement.create(self.spec, index) for index in range(instances)]
        for instance in created:
            instance.listener = listener
            self.replicas.add(instance)
        await asyncio.gather(*(instance.start() for instance in created))
        first = created[0]
        self.signature = first.signature
        await self.batcher.start()
        self.loaded_at = time.time()

    async def stop(self, drain_timeout: float) -> None:
        await self.batcher.stop(drain_timeout)
        await asyncio.gather(*(i.stop(drain_timeout) for i in list(self.replicas.instances)))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "runtime": self.spec.plugin,
            "ready": self.ready,
            "queue_depth": self.batcher.queue_depth,
            "instances": [i.describe() for i in self.replicas.instances],
            "signature": self.signature.to_dict() if self.signature else None,
        }


class ModelEndpoint:
    """A model and its served versions; routes each request to one version."""

    def __init__(self, name: str, config: ModelConfig, router: Router) -> None:
        self.name = name
        self.config = config
        self.router = router
        self.versions: dict[str, VersionEndpoint] = {}
        self.table = RoutingTable(name, ())
        self.timeout = config.timeout
        #: Mirrors, cascades, breakers, fallbacks, cache and rollout samples; ``None`` when unused.
        self.delivery: Delivery | None = None

    def set_table(self, table: RoutingTable) -> None:
        """Swap the routing table (one reference assignment: atomic for the data path)."""
        self.table = table

    def version(self, version: str | None, request: InferenceRequest | None = None) -> VersionEndpoint:
        """The endpoint for an explicit version, or the router's choice when ``version`` is ``None``."""
        if version is None:
            table = self.table
            if not table.versions:
                raise ModelNotReadyError(f"model {self.name!r} has no ready version", model=self.name)
            if request is None or (len(table.versions) == 1 and not table.weights):
                version = table.versions[-1]
            else:
                version = self.router.route(request, table).primary.version
        return self.loaded(version)

    def loaded(self, version: str) -> VersionEndpoint:
        """The endpoint of a loaded version; ``ModelNotFoundError`` naming the loaded ones otherwise."""
        endpoint = self.versions.get(version)
        if endpoint is None:
            raise ModelNotFoundError(
                f"model {self.name!r} has no version {version!r}",
                model=self.name,
                version=version,
                available=sorted(self.versions),
            )
        return endpoint

    @property
    def ready(self) -> bool:
        return any(v.ready for v in self.versions.values())

    def submit(self, request: InferenceRequest) -> tuple[VersionEndpoint, asyncio.Future[Arrays]]:
        """Route and queue ``request``; the future resolves to its outputs (or its error) by its deadline."""
        delivery = self.delivery
        if delivery is not None:
            return delivery.submit(self, request)
        endpoint = self.version(request.version, request)
        if endpoint.signature is not None:
            endpoint.signature.check_inputs(request.inputs)
        if endpoint.input_checks is not None:
            endpoint.input_checks(request.inputs)
        request.version = endpoint.version
        future = endpoint.batcher.submit(request)
        enforce_deadline(endpoint.batcher, request, future)
        return endpoint, future

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ready": self.ready,
            "router": self.config.router.name,
            "traffic": dict(self.table.weights)
            or ({self.table.versions[-1]: 100.0} if self.table.versions else {}),
            "versions": [v.describe() for v in self.versions.values()],
        }


class ModelManager:
    """Loads, serves and unloads the models of one server."""

    def __init__(
        self,
        config: ServerConfig,
        host: PluginHost,
        observers: ObserverFactory | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.repository = ModelRepository(config.repository_path)
        self.models: dict[str, ModelEndpoint] = {}
        self._observers = observers
        self._progress = progress
        self.version_listeners: list[VersionListener] = []
        self.loading = True
        self.failures: dict[str, str] = {}

    # lookups (data path) -----------------------------------------------------------------------

    def endpoint(self, name: str) -> ModelEndpoint:
        endpoint = self.models.get(name)
        if endpoint is None:
            check_name("model", name)
            raise ModelNotFoundError(
                f"model {name!r} is not served", model=name, available=sorted(self.models)
            )
        return endpoint

    @property
    def ready(self) -> bool:
        """True once loading finished and every model has at least one ready version."""
        return not self.loading and bool(self.models) and all(m.ready for m in self.models.values())

    # control path ------------------------------------------------------------------------------

    def plan(self) -> list[ModelPlan]:
        """Resolve every model in the repository (validates all config before loading anything)."""
        return [self.repository.plan(name, self.config, self.host) for name in self.repository.models()]

    async def load_all(self, plans: Iterable[ModelPlan] | None = None) -> None:
        """Load every planned model; a version that fails to load is reported, the rest still serve."""
        try:
            for plan in plans if plans is not None else self.plan():
                endpoint = self._endpoint_for(plan.name, plan.config)
                for version in plan.versions:
                    try:
                        await self.load_version(plan.name, version, plan.specs[version], endpoint=endpoint)
                        if plan.config.traffic:
                            self.publish(plan.name, {v: w for v, w in plan.config.traffic.items() if w > 0})
                    except Exception as exc:  # one broken version must not stop the others loading
                        message = (
                            exc.message if isinstance(exc, LadleError) else f"{type(exc).__name__}: {exc}"
                        )
                        self.failures[f"{plan.name}/{version}"] = message
                        self._report(plan.name, version, f"failed: {message}")
        finally:
            self.loading = False

    def _endpoint_for(self, name: str, config: ModelConfig) -> ModelEndpoint:
        endpoint = self.models.get(name)
        if endpoint is None:
            router_factory = self.host.load("router", config.router.name)
            endpoint = ModelEndpoint(name, config, router_factory(config.router.options))
            self.models[name] = endpoint
        return endpoint

    def _report(self, model: str, version: str, phase: str) -> None:
        if self._progress is not None:
            self._progress(model, version, phase)

    def _listener(self, instance: Instance, state: InstanceState) -> None:
        self._report(instance.spec.model, instance.spec.version, state.value)
        try:
            self.host.hook.ladle_instance_state(
                model=instance.spec.model, version=instance.spec.version, instance=instance.name, state=state
            )
        except Exception:  # a broken observer plugin must not fail the instance it observes
            logger.exception("ladle_instance_state hook failed for %s", instance.name)

    async def load_version(
        self,
        model: str,
        version: str,
        spec: RuntimeSpec | None = None,
        *,
        endpoint: ModelEndpoint | None = None,
        traffic: bool = True,
    ) -> VersionEndpoint:
        """Load and warm one version; only when it is ready does it join the routing table."""
        if endpoint is None:
            endpoint = self.models.get(model) or self._endpoint_for(
                model, self.repository.plan(model, self.config, self.host).config
            )
        config = endpoint.config
        if spec is None:
            spec = self.repository.spec(model, version, config, self.host)
        if version in endpoint.versions:
            raise ConfigError(f"version {version!r} of model {model!r} is already loaded", model=model)
        placement_factory = self.host.load("placement", config.placement.name)
        placement_options = {
            "executor": config.executor,
            **config.placement.options,
        }
        placement: Placement = placement_factory(placement_options, self.host)
        replicas = ReplicaSet(model, version)
        observer = self._observers(model, version) if self._observers else None
        batcher_name, batcher_options = config.batcher.name, config.batcher.options
        preferred = getattr(self.host.load("runtime", spec.plugin), "preferred_batcher", None)
        if preferred and batcher_name == DEFAULT_BATCHER and not batcher_options:
            batcher_name = preferred
        batcher_factory = self.host.load("batcher", batcher_name)
        batcher: Batcher = batcher_factory(replicas, batcher_options, observer)
        version_endpoint = VersionEndpoint(spec, config, replicas, batcher, placement)
        try:
            await version_endpoint.start(placement.initial_instances(config.instances), self._listener)
        except BaseException:
            with contextlib.suppress(Exception):
                await version_endpoint.stop(0)
            raise
        endpoint.versions[version] = version_endpoint
        for listener in self.version_listeners:
            listener(model, version, version_endpoint)
        if traffic:
            self.publish(model)
        self._report(model, version, "serving" if traffic else "loaded, no traffic yet")
        return version_endpoint

    def publish(self, model: str, weights: dict[str, float] | None = None) -> None:
        """Swap in a routing table of the ready versions (natural order) with ``weights`` if given."""
        from .repository import version_key

        endpoint = self.models[model]
        versions = tuple(sorted((v for v, e in endpoint.versions.items() if e.ready), key=version_key))
        endpoint.set_table(RoutingTable(model, versions, dict(weights or {})))

    async def unload_version(self, model: str, version: str, drain_timeout: float | None = None) -> None:
        """Take a version out of routing first, then drain and stop it."""
        endpoint = self.endpoint(model)
        target = endpoint.loaded(version)
        table = endpoint.table
        weights = {v: w for v, w in table.weights.items() if v != version}
        endpoint.set_table(
            replace(table, versions=tuple(v for v in table.versions if v != version), weights=weights)
        )
        del endpoint.versions[version]
        await target.stop(self.config.server.drain_timeout if drain_timeout is None else drain_timeout)
        for listener in self.version_listeners:
            listener(model, version, None)

    async def close(self, drain_timeout: float | None = None) -> None:
        timeout = self.config.server.drain_timeout if drain_timeout is None else drain_timeout
        stops = [v.stop(timeout) for m in self.models.values() for v in m.versions.values()]
        await asyncio.gather(*stops, return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.models.values()]
