"""Hook specifications: the contract between ladle and its plugins.

A plugin is a module (or object) with functions marked ``@ladle.hookimpl`` and an entry point in
the ``ladle`` group. Registration hooks receive a ``register`` callback, as in::

    from ladle import hookimpl

    @hookimpl
    def register_runtimes(register):
        register("mine", "my_package.runtime:MyRuntime", requires=["mylib"], extra="mine")

Hooks are for discovery, configuration and lifecycle; the data path never calls a hook. Every hook
runs in the front process, synchronously (pluggy is synchronous).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import ServerConfig
    from .plugin_host import Register
    from .runtime import InstanceState

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "ladle"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_runtimes(register: Register) -> None:
    """Called once per plugin manager, at discovery, to collect runtimes.

    ``register(name, factory, *, requires=(), extra=None, api_version=1, detect=None,
    description="")``: ``factory`` is a ``Runtime`` subclass or a lazy ``"module:attribute"``
    string (keep framework imports out of the registration path); ``requires`` lists importable
    module names the runtime needs, and ``extra`` the pip extra that installs them; ``detect`` takes a
    version directory and returns ``True`` when it holds an artifact this runtime serves (zero-config).
    """


@hookspec
def register_batchers(register: Register) -> None:
    """Called once at discovery to collect batchers (factories of ``ladle.batching.Batcher``)."""


@hookspec
def register_routers(register: Register) -> None:
    """Called once at discovery to collect routers (factories of ``ladle.routing.Router``)."""


@hookspec
def register_scaling_policies(register: Register) -> None:
    """Called once at discovery to collect scaler policies (``ladle.scaling.ScalingPolicy``):
    windowed metrics in, a desired instance count out."""


@hookspec
def register_placements(register: Register) -> None:
    """Called once at discovery to collect scaler placements (``ladle.scaling.Placement``):
    where instances run (threads, worker processes, Ray actors, Kubernetes pods)."""


@hookspec
def ladle_configure(config: ServerConfig) -> None:
    """Called after the configuration is read and validated, before any model loads.

    A plugin may read its own section from ``config.plugin_options(name)``; raise
    ``ConfigError`` to refuse the configuration.
    """


@hookspec
def ladle_startup(server: Any) -> None:
    """Called once the server has loaded its models, before it reports ready."""


@hookspec
def ladle_shutdown(server: Any) -> None:
    """Called once while the server stops, after in-flight requests are drained."""


@hookspec
def ladle_instance_state(model: str, version: str, instance: str, state: InstanceState) -> None:
    """Called on the control path whenever a runtime instance changes lifecycle state."""
