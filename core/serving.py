"""Served models: one ``ModelEndpoint`` per model, one ``VersionEndpoint`` per served version.

The ``ModelManager`` is the control path's handle on them: it plans models from the repository and
config, builds batchers, routers and placements through the plugin host, loads and warms versions,
swaps routing tables atomically and unloads versions. The data path reaches them only through the
admission pipeline (``ladle.admission``), which routes, checks and queues without touching a hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from .admission import Admission, Pending, Proceed, Stage, WatchedStream, chain
from .batching import Batcher, BatchObserver, ReplicaSet, enforce_deadline
from .config import DEFAULT_BATCHER, ModelConfig, ServerConfig
from .envelope import Arrays, InferenceRequest
from .errors import ConfigError, InvalidRequestError, LadleError, ModelNotFoundError
from .instance import Instance
from .plugin_host import PluginHost
from .repository import ModelPlan, ModelRepository, check_name, version_key
from .routing import Route, Router, RoutingTable
from .runtime import InstanceState, RuntimeSpec
from .scaling import Placement
from .tensors import Signature

__all__ = ["ModelEndpoint", "ModelManager", "ObserverFactory", "VersionEndpoint", "VersionListener"]

logger = logging.getLogger("ladle.serving")

#: Makes the per-version batch observer (the telemetry layer provides one); ``None`` observes nothing.
ObserverFactory = Callable[[str, str], BatchObserver | None]
#: Progress callback: (model, version, instance state or a phase name).
Progress = Callable[[str, str, str], None]
#: Called with a version endpoint once it is ready, and with ``(model, version, None)`` once removed.
VersionListener = Callable[[str, str, "VersionEndpoint | None"], None]


class VersionEndpoint:
    """One served version: its replica set, batcher and signature, and the checks a request passes
    before it queues."""

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
        self.generates = type(batcher).streams
        self.signature: Signature | None = None
        self.loaded_at = 0.0
        #: Optional check of a request's inputs before it queues (raises a 4xx ``LadleError``).
        self.input_checks: Callable[[Arrays], None] | None = None

    @property
    def ready(self) -> bool:
        return self.replicas.any_ready

    # the data path -----------------------------------------------------------------------------

    def check(self, request: InferenceRequest) -> None:
        """Refuse (4xx) what this version can never answer, before anything queues."""
        if request.generation is not None:
            if not self.generates:
                raise InvalidRequestError(
                    f"model {self.model!r} does not generate text (its batcher is "
                    f"{self.config.batcher.name!r})",
                    model=self.model,
                    version=self.version,
                )
            return
        signature = self.signature
        if signature is not None:
            signature.check_inputs(request.inputs)
            if request.outputs:
                signature.check_outputs(request.outputs)
        if self.input_checks is not None:
            self.input_checks(request.inputs)

    def queue(self, request: InferenceRequest) -> Pending:
        """Hand a checked request to the batcher: ``submit`` for tensors, ``stream`` for a generation.
        A client that goes away cancels the future or aborts the stream."""
        batcher = self.batcher
        if request.generation is not None:
            stream = WatchedStream(batcher.stream(request))
            request.cancel.work = stream
            return Pending(self.model, self.version, stream=stream)
        future = batcher.submit(request)
        enforce_deadline(batcher, request, future)
        request.cancel.work = future
        return Pending(self.model, self.version, future)

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self, instances: int, listener: Callable[[Instance, InstanceState], None] | None) -> None:
        """Create, load and warm ``instances`` instances, then start the batcher."""
        created = [self.placement.create(self.spec, index, self.config) for index in range(instances)]
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
    """A model and its served versions, its router and the delivery stages its requests pass.

    ``table``, ``router`` and ``stages`` are each replaced whole by the control path (one reference
    assignment), so a request sees either the old value or the new one.
    """

    def __init__(
        self, name: str, config: ModelConfig, router: Router, router_name: str | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.versions: dict[str, VersionEndpoint] = {}
        self.table = RoutingTable(name, ())
        self.timeout = config.timeout
        self.router = router
        self.router_name = router_name or config.router.name
        #: version -> experiment arm, when the router names arms (``None`` otherwise).
        self.arms: Mapping[str, str] | None = None
        self.stages: tuple[Stage, ...] = ()
        self.proceed: Proceed = chain(())
        #: The route of every request while the router is ``static`` (asked once per table).
        self.fixed_route: Route | None = None

    def set_table(self, table: RoutingTable) -> None:
        """Swap the routing table."""
        self.table = table
        self._derive()

    def set_router(self, router: Router, name: str) -> None:
        """Swap the router (the data path sees the old router or the new one)."""
        self.router = router
        self.router_name = name
        self._derive()

    def _derive(self) -> None:
        """What the data path reads instead of asking the router per request."""
        router, table = self.router, self.table
        self.fixed_route = router.route(_TABLE_ONLY, table) if router.static and table.versions else None
        arms = {v: arm for v in self.versions if (arm := router.arm_of(v)) is not None}
        self.arms = arms or None

    def set_stages(self, stages: tuple[Stage, ...]) -> None:
        """Swap the delivery stages (outermost first); ``()`` is the plain path."""
        self.proceed = chain(stages)
        self.stages = stages

    def loaded(self, version: str) -> VersionEndpoint:
        """The endpoint of a loaded version; ``ModelNotFoundError`` naming the loaded ones otherwise."""
        endpoint = self.versions.get(version)
        if endpoint is None:
            raise ModelNotFoundError(
                f"model {self.name!r} has no version {version!r}",
                model=self.name,
                version=version,
                available=sorted(self.versions, key=version_key),
            )
        return endpoint

    def latest(self) -> VersionEndpoint | None:
        """The newest version that takes traffic (what metadata describes by default)."""
        table = self.table
        return self.versions.get(table.latest) if table.versions else None

    @property
    def ready(self) -> bool:
        return any(v.ready for v in self.versions.values())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ready": self.ready,
            "router": self.router_name,
            "traffic": dict(self.table.weights)
            or ({self.table.versions[-1]: 100.0} if self.table.versions else {}),
            "versions": [v.describe() for v in self.versions.values()],
        }


#: What a ``static`` router is asked with: its answer may depend on the table only.
_TABLE_ONLY = InferenceRequest("", {})


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
        self.placements: dict[str, Placement] = {}
        #: The one admission pipeline of this server's data path.
        self.admission = Admission(self.endpoint)

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
        placement = self.placement(config.placement.name)
        replicas = ReplicaSet(model, version)
        observer = self._observers(model, version) if self._observers else None
        batcher_name, batcher_options = config.batcher.name, config.batcher.options
        preferred = self.host.get("runtime", spec.plugin).capabilities.preferred_batcher
        if preferred and batcher_name == DEFAULT_BATCHER and not batcher_options:
            batcher_name = preferred
        batcher_factory = self.host.load("batcher", batcher_name)
        batcher: Batcher = batcher_factory(replicas, batcher_options, observer)
        version_endpoint = VersionEndpoint(spec, config, replicas, batcher, placement)
        try:
            await version_endpoint.start(config.instances, self._listener)
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

    def placement(self, name: str) -> Placement:
        """The placement named ``name``: one object per server, shared by every version using it
        (so it can pack several models onto one device); its options come from
        ``[plugins.options.<name>]``."""
        placement = self.placements.get(name)
        if placement is None:
            factory = self.host.load("placement", name)
            placement = self.placements[name] = factory(self.config.plugin_options(name), self.host)
        return placement

    def publish(self, model: str, weights: dict[str, float] | None = None) -> None:
        """Swap in a routing table of the ready versions (natural order) with ``weights`` if given."""
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
        for placement in self.placements.values():
            await placement.close()

    def describe(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.models.values()]
