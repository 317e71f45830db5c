"""The server object: configuration, plugin host, models and telemetry of one ladle process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .config import SERVER_CONFIG_FILE, ServerConfig, load_server_config
from .errors import ConfigError
from .plugin_host import PluginHost
from .serving import ModelManager, ObserverFactory, Progress

__all__ = ["Server", "load_config"]


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
        self.telemetry: Any = None
        self.extra_routes: list[Any] = []
        self.on_stop: list[Callable[[], Any]] = []
        self.manager = ModelManager(config, host, observers, progress)
        self.plans = self.manager.plan()  # validate all model config before serving anything
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every model (in the background of the running server) and call ``ladle_startup``."""
        await self.manager.load_all(self.plans)
        self.host.hook.ladle_startup(server=self)

    async def stop(self) -> None:
        """Drain and stop every version, then call ``ladle_shutdown``."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loading
        await self.manager.close()
        for callback in self.on_stop:
            result = callback()
            if asyncio.iscoroutine(result):
                await result
        self.host.hook.ladle_shutdown(server=self)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Starlette lifespan: the server answers (live, not ready) while models load."""
        self._loading = asyncio.create_task(self.start())
        try:
            yield
        finally:
            await self.stop()
