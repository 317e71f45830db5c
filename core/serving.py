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
from functools import partial
from typing import Any

from .admission import Admission, Pending, Proceed, Stage, WatchedStream, chain
from .batching import Batcher, BatchObserver, Foreground, ReplicaSet, enforce_deadline
from .config import DEFAULT_BATCHER, ModelConfig, ServerConfig
from .envelope import Arrays, InferenceRequest
from .errors import ConfigError, InvalidRequestError, LadleError, ModelNotFoundError, PluginError
from .instance import Instance
from .plugin_host import PluginHost
from .repository import ModelPlan, ModelRepository, check_name, version_key
from .routing import Route, Router, RoutingTable
from .runtime import InstanceState, RuntimeSpec
from .scaling import Placement, ScalingPolicy
from .tensors import Signature

__all__ = ["ModelEndpoint", "ModelManager", "ObserverFactory", "VersionEndpoint", "VersionListener"]

logger = logging.getLogger("ladle.serving")

#: Makes the per-version batch observer (the telemetry layer provides one); ``None`` observes nothing.
ObserverFactory = Callable[[str, str], BatchObserver | None]
#: Progress callback: (model, version, instance state or a phase name).
Progress = Callable[[str, str, str], None]
#: Called with a version endpoint once it is ready, and with ``(model, version, None)`` once removed.
VersionListener = Callable[[str, str, "VersionEndpoint | None"], None]
#: Called once when loading ends with failures and ``keep_going`` is off, with the failures.
StartFailedListener = Callable[[dict[str, str]], None]


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
        policy: ScalingPolicy | None = None,
        requested: int | None = None,
    ) -> None:
        self.model = spec.model
        self.version = spec.version
        self.spec = spec
        self.config = config
        self.replicas = replicas
        self.batcher = batcher
        self.placement = placement
        #: The version's scaling policy (``ladle.scaling_loop`` asks it every tick).
        self.policy = policy
        #: An operator's instance count for this version (``resources.replicas``), if one was given.
        self.requested = requested
        self.generates = type(batcher).streams
        self._expires = not batcher.enforces_deadlines
        self.signature: Signature | None = None
        self.loaded_at = 0.0
        #: Optional check of a request's inputs before it queues (raises a 4xx ``LadleError``).
        self.input_checks: Callable[[Arrays], None] | None = None

    @property
    def ready(self) -> bool:
        """A ready instance serves, or the version is scaled to zero and starts one on demand."""
        return self.replicas.any_ready or self.replicas.standby

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
        if request.generation is not None:
            stream = WatchedStream(self.batcher.stream(request))
            request.cancel.work = stream
            return Pending(self.model, self.version, stream=stream)
        return Pending(self.model, self.version, self.submit(request))

    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        """Hand a checked tensor request to the batcher; its future fails at the deadline (when the
        batcher does not see to that itself) and is cancelled when the client goes away."""
        future = self.batcher.submit(request)
        if self._expires:  # known once: most batchers enforce deadlines, and this is per request
            enforce_deadline(self.batcher, request, future)
        request.cancel.work = future
        return future

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
        #: The version every request without a named version goes to when nothing on the way needs
        #: asking: a ``static`` router routing to this model, no experiment arms, no stages.
        self.direct: VersionEndpoint | None = None

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
        route = self.fixed_route
        direct = None
        if route is not None and not arms and not self.stages and route.primary.model == self.name:
            direct = self.versions.get(route.primary.version)
        self.direct = direct

    def add_version(self, version: str, endpoint: VersionEndpoint) -> None:
        """Serve ``endpoint`` as ``version`` (it takes traffic once a routing table names it)."""
        self.versions[version] = endpoint
        self._derive()

    def remove_version(self, version: str) -> None:
        """Stop serving ``version`` (take it out of the routing table first)."""
        del self.versions[version]
        self._derive()

    def set_stages(self, stages: tuple[Stage, ...]) -> None:
        """Swap the delivery stages (outermost first); ``()`` is the plain path."""
        self.proceed = chain(stages)
        self.stages = stages
        self._derive()

    def loaded(self, version: str) -> VersionEndpoint:
        """The endpoint of a loaded version; ``ModelNotFoundError`` naming the loaded ones otherwise."""
        endpoint = self.versions.get(version)
        if endpoint is None:
            available = sorted(self.versions, key=version_key)
            raise ModelNotFoundError(
                f"model {self.name!r} has no version {version!r}; loaded: {', '.join(available) or 'none'}",
                model=self.name,
                version=version,
                available=available,
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
        #: When online work last ran in any model (shared by every replica set; paces background work).
        self.foreground = Foreground()
        #: Told when the start failed (``ladle serve`` stops then); see ``loading``.
        self.start_failed: list[StartFailedListener] = []
        self.keep_going = config.server.keep_going
        self._loading = True
        self._start_judged = False
        #: ``"model/version"`` (or ``"model"`` for a config problem) -> why it is not served.
        self.failures: dict[str, str] = {}
        self.placements: dict[str, Placement] = {}
        #: The one admission pipeline of this server's data path.
        self.admission = Admission(self.models, self.endpoint)

    # lookups (data path) -----------------------------------------------------------------------

    def endpoint(self, name: str) -> ModelEndpoint:
        endpoint = self.models.get(name)
        if endpoint is None:
            check_name("model", name)
            available = sorted(self.models)
            raise ModelNotFoundError(
                f"model {name!r} is not served; served: {', '.join(available) or 'none'}",
                model=name,
                available=available,
            )
        return endpoint

    @property
    def loading(self) -> bool:
        """True until the models the source of truth lists have loaded (or failed to).

        Setting it to ``False`` ends the start: with failures and without ``keep_going`` the
        ``start_failed`` listeners are told (once).
        """
        return self._loading

    @loading.setter
    def loading(self, value: bool) -> None:
        self._loading = value
        if not value and self.failures and not self.keep_going and not self._start_judged:
            self._start_judged = True
            for listener in list(self.start_failed):
                listener(dict(self.failures))

    @property
    def ready(self) -> bool:
        """True once loading finished and, with ``strict_readiness`` (the default), every model
        has a ready version and none failed; without it, once any one model serves."""
        models = self.models.values()
        if self._loading or not models:
            return False
        if self.config.server.strict_readiness:
            return not self.failures and all(m.ready for m in models)
        return any(m.ready for m in models)

    # control path ------------------------------------------------------------------------------

    def plan(self) -> list[ModelPlan]:
        """Resolve and check every model before anything loads: its config, its versions, and each
        plugin it names (runtime, batcher, router, split router, scaling policy, placement) with
        its options.

        Without ``keep_going`` any problem raises one ``ConfigError`` listing them all, each naming
        the file and the key; with it, a model with a problem is left out and recorded in
        ``failures``. A ``[models.NAME]`` table for a model that is not in the repository, and a
        repository folder whose name is not a valid model name, are problems too.
        """
        names = self.repository.models()
        problems: dict[str, LadleError] = {
            section: self._unknown_section(section, names)
            for section in sorted(set(self.config.models).difference(names))
        }
        for folder in self.repository.misnamed():
            problems[folder] = ConfigError(
                f"{self.repository.root / folder}: {folder!r} is not a valid model name: use letters, "
                "digits, '.', '_' and '-'",
                file=str(self.repository.root / folder),
            )
        plans = []
        for name in names:
            try:
                plan = self.repository.plan(name, self.config, self.host)
                self._check_plugins(plan)
            except LadleError as exc:
                problems[name] = exc
                continue
            plans.append(plan)
        if problems and not self.keep_going:
            raise _all_of(problems)
        for name, problem in problems.items():
            self.failures[name] = problem.message
            self._report(name, "-", f"failed: {problem.message}")
        return plans

    def _unknown_section(self, section: str, names: list[str]) -> ConfigError:
        source = f"{self.config.source or 'ladle.toml'} [models.{section}]"
        return ConfigError(
            f"{source}: no model {section!r} in the repository {self.repository.root}; "
            f"its models: {', '.join(names) or 'none'}",
            file=self.config.source or "ladle.toml",
            key=f"models.{section}",
            available=names,
        )

    def _check_plugins(self, plan: ModelPlan) -> None:
        """Build (and drop) what loading will build, so a misspelt plugin name or a bad option
        stops the start before anything loads, naming the file and the key."""
        config = plan.config
        for version, spec in plan.specs.items():
            name, options = self._batcher_choice(config, spec)
            replicas = ReplicaSet(plan.name, version)
            _checked(plan, "batcher", partial(self._new_batcher, name, replicas, options))
        router = config.router
        _checked(plan, "router", lambda: self.host.load("router", router.name)(router.options))
        _checked(plan, "split_router", lambda: self.host.get("router", config.split_router))
        _checked(plan, "scaling", lambda: self.scaling_policy(config))
        placement = config.placement.name
        _checked(plan, "placement", lambda: self.host.get("placement", placement))
        server_file = self.config.source or "ladle.toml"
        try:
            self.placement(placement)
        except LadleError as exc:
            source = f"{server_file} [plugins.options.{placement}]"
            raise ConfigError(f"{source}: {exc.message}", file=server_file, model=plan.name) from None

    def _new_batcher(
        self, name: str, replicas: ReplicaSet, options: dict[str, Any], observer: BatchObserver | None = None
    ) -> Batcher:
        batcher: Batcher = self.host.load("batcher", name)(replicas, options, observer)
        return batcher

    def _batcher_choice(self, config: ModelConfig, spec: RuntimeSpec) -> tuple[str, dict[str, Any]]:
        """The batcher a version gets: the configured one, or the runtime's preferred batcher when
        the config keeps the default with no options."""
        name, options = config.batcher.name, config.batcher.options
        preferred = self.host.get("runtime", spec.plugin).capabilities.preferred_batcher
        if preferred and name == DEFAULT_BATCHER and not options:
            name = preferred
        return name, options

    async def load_all(self, plans: Iterable[ModelPlan] | None = None) -> None:
        """Load every planned model; a version that fails to load is recorded in ``failures`` and the
        others still load. Without ``keep_going`` the start has then failed (``start_failed``)."""
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
                        files = sorted(set(plan.sources.values()))
                        if isinstance(exc, ConfigError) and "file" not in exc.details and files:
                            message += f" (model {plan.name!r} is configured in {', '.join(files)})"
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
        instances: int | None = None,
    ) -> VersionEndpoint:
        """Load and warm one version; only when it is ready does it join the routing table.

        ``instances`` is an operator's count for this version (a deployment's ``resources.replicas``):
        it starts with that many instead of the config's, and its scaling policy is told.
        """
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
        replicas = ReplicaSet(model, version, self.foreground)
        observer = self._observers(model, version) if self._observers else None
        batcher_name, batcher_options = self._batcher_choice(config, spec)
        batcher = self._new_batcher(batcher_name, replicas, batcher_options, observer)
        policy = self.scaling_policy(config)
        version_endpoint = VersionEndpoint(spec, config, replicas, batcher, placement, policy, instances)
        try:
            await version_endpoint.start(instances or config.instances, self._listener)
        except BaseException:
            with contextlib.suppress(Exception):
                await version_endpoint.stop(0)
            raise
        endpoint.add_version(version, version_endpoint)
        self.failures.pop(f"{model}/{version}", None)  # it serves now, whatever failed before
        self.failures.pop(model, None)
        for listener in self.version_listeners:
            listener(model, version, version_endpoint)
        if traffic:
            self.publish(model)
        self._report(model, version, "serving" if traffic else "loaded, no traffic yet")
        return version_endpoint

    def scaling_policy(self, config: ModelConfig) -> ScalingPolicy:
        """A new scaling policy for one version of a model (``ConfigError`` for bad options)."""
        factory = self.host.load("scaling_policy", config.scaling.name)
        policy = factory(config.scaling.options)
        if not isinstance(policy, ScalingPolicy):
            raise ConfigError(
                f"scaling policy {config.scaling.name!r} did not build a ladle.ScalingPolicy", key="scaling"
            )
        return policy

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

    def forget_model(self, model: str) -> None:
        """Stop serving a model whose versions are unloaded; its load failures no longer hold
        readiness back."""
        self.models.pop(model, None)
        for key in [k for k in self.failures if k == model or k.startswith(f"{model}/")]:
            del self.failures[key]

    async def unload_version(self, model: str, version: str, drain_timeout: float | None = None) -> None:
        """Take a version out of routing first, then drain and stop it."""
        endpoint = self.endpoint(model)
        target = endpoint.loaded(version)
        table = endpoint.table
        weights = {v: w for v, w in table.weights.items() if v != version}
        endpoint.set_table(
            replace(table, versions=tuple(v for v in table.versions if v != version), weights=weights)
        )
        endpoint.remove_version(version)
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


def _checked(plan: ModelPlan, key: str, build: Callable[[], object]) -> None:
    """Run ``build``; a failure is raised again naming where ``key`` was set (a plugin error keeps
    its class, so a missing dependency still says what to install; anything else is a
    ``ConfigError``)."""
    source = plan.source(key)
    try:
        build()
    except LadleError as exc:
        details = {k: v for k, v in exc.details.items() if k not in ("file", "key", "model")}
        kind = type(exc) if isinstance(exc, PluginError) else ConfigError
        raise kind(
            f"{source}: {key}: {exc.message}", file=source, key=key, model=plan.name, **details
        ) from None
    except Exception as exc:  # a plugin that validates its options its own way
        raise ConfigError(
            f"{source}: {key}: {type(exc).__name__}: {exc}", file=source, key=key, model=plan.name
        ) from None


def _all_of(problems: Mapping[str, LadleError]) -> LadleError:
    """One error for every configuration problem found (the only one, as it is, when alone)."""
    if len(problems) == 1:
        return next(iter(problems.values()))
    lines = "\n".join(f"  - {exc.message}" for exc in problems.values())
    return ConfigError(
        f"{len(problems)} configuration problems:\n{lines}",
        problems=[{"model": name, "error": exc.message, **exc.details} for name, exc in problems.items()],
    )
