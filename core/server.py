"""The server object: configuration, plugin host, models and telemetry of one ladle process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .config import SERVER_CONFIG_FILE, ServerConfig, load_server_config
from .errors import ConfigError
from .plugin_host import PluginHost
from .serving import ModelManager, ObserverFactory, Progress, VersionEndpoint
from .threads import apply_process_budget

__all__ = ["Server", "load_config"]

logger = logging.getLogger("ladle.server")


def load_config(path: Path | None) -> ServerConfig:
    """``path`` may be a ``ladle.toml``, a directory holding one, or a model repository."""
    if path is None:
        return load_server_config(None)
    if path.is_file():
        return load_server_config(path)
    if (path / SERVER_CONFIG_FILE).is_file():
        return load_server_config(path / SERVER_CONFIG_FILE)
    if path.is_dir():
        config = load_server_config(None)
        return config.model_copy(
            update={"server": config.server.model_copy(update={"repository": str(path)})}
        )
    raise ConfigError(f"{path}: neither a {SERVER_CONFIG_FILE} nor a model repository", file=str(path))


class Server:
    """Everything one serving process owns. The HTTP app (``ladle.http.app.create_app``) wraps it."""

    def __init__(
        self,
        config: ServerConfig,
        host: PluginHost | None = None,
        *,
        progress: Progress | None = None,
        observers: ObserverFactory | None = None,
    ) -> None:
        self.config = config
        if host is None:
            host = PluginHost(config.plugins.disabled)
            for module in config.plugins.modules:
                host.add_module(module)
            host.discover()
        self.host = host
        self.host.hook.ladle_configure(config=config)
        from .telemetry import Telemetry, telemetry_routes

        self.telemetry = Telemetry.from_server_config(config)
        self.trace_context = self.telemetry.sampler.start_request
        self.extra_routes: list[Any] = list(telemetry_routes(self.telemetry))
        self.on_stop: list[Callable[[], Any]] = [self.telemetry.close]
        enabled = self.telemetry.config.enabled
        if observers is None and enabled:
            observers = self.telemetry.observer_for
        self.manager = ModelManager(config, host, observers, progress)
        if enabled:
            self.manager.version_listeners.append(self._version_changed)
            self.manager.admission.answered = self.telemetry.answered
        self.plans = self.manager.plan()  # validate all model config before serving anything
        # Framework thread pools are process-wide: size them once, before any runtime imports one.
        apply_process_budget(max((s.threads for p in self.plans for s in p.specs.values()), default=1))
        from .deployments import DeploymentController, control_routes

        self.controller = DeploymentController(self.manager, config)
        self.controller.open_store()  # a corrupt or unwritable store fails here, before serving
        from .scaling_loop import ScalingLoop

        stats = self.telemetry.stats if enabled else None
        self.scaling = ScalingLoop(self.manager, events=self.controller.events.record, stats=stats)
        self.scaling.check(self.plans)  # scaling policies' options fail here, before anything loads
        self.controller.scaling = self.scaling
        self.extra_routes.extend(control_routes(self.controller, config))
        from .jobs import JobService, job_routes

        self.jobs = JobService.open(config, self.manager)  # None without [jobs] store
        self.extra_routes.extend(job_routes(self.jobs, config))
        self._loading: asyncio.Task[None] | None = None

    def _version_changed(self, model: str, version: str, endpoint: VersionEndpoint | None) -> None:
        if endpoint is None:
            self.telemetry.version_removed(model, version)
            return
        signature = endpoint.config.signature or (
            endpoint.signature.to_dict() if endpoint.signature else None
        )
        self.telemetry.version_ready(
            model, version, batcher=endpoint.batcher, signature=signature, slo=endpoint.config.latency_slo
        )
        from .telemetry.generation import register_generation_gauges

        register_generation_gauges(self.telemetry.stats, model, version, endpoint.batcher)
        checks = self.telemetry.input_checks(model, version)
        if checks is not None:
            endpoint.input_checks = checks.validate

    async def start(self) -> None:
        """Load the models (in the background of the running server) and call ``ladle_startup``.

        The deployment controller decides what loads: the repository and config in static mode, the
        deployment store in managed mode (see ``ladle.deployments.controller``). Jobs resume
        as soon as the models have loaded.
        """
        if self.jobs is not None:
            await self.jobs.start()
        self.scaling.start()  # versions come under the scaling loop and the supervisor as they load
        await self.controller.start(self.plans)
        try:
            self.host.hook.ladle_startup(server=self)
        except Exception:  # a broken plugin must not stop the server it observes
            logger.exception("a ladle_startup hook failed")

    async def stop(self) -> None:
        """Drain and stop every version, then call ``ladle_shutdown``."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loading
        if self.jobs is not None:  # first: a job must not see its model stop and record that
            await self.jobs.close()
        await self.scaling.close()  # no instance starts or is replaced while the versions stop
        await self.controller.close()
        await self.manager.close()
        for callback in self.on_stop:
            result = callback()
            if asyncio.iscoroutine(result):
                await result
        try:
            self.host.hook.ladle_shutdown(server=self)
        except Exception:
            logger.exception("a ladle_shutdown hook failed")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Starlette lifespan: the server answers (live, not ready) while models load.

        With ``[server] grpc_port`` set, the gRPC ingress serves in the same loop from the start and
        drains its calls in flight (up to ``drain_timeout``) before the models stop."""
        ingress = None
        if self.config.server.grpc_port:
            from .grpc.server import GrpcIngress

            ingress = GrpcIngress(self)
            await ingress.start()  # a port that cannot be bound fails the start
        self._loading = asyncio.create_task(self.start())
        try:
            yield
        finally:
            if ingress is not None:
                await ingress.stop(self.config.server.drain_timeout)
            await self.stop()
