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
    """Register the runtimes a plugin provides.

    Implemented by runtime plugins; called once per plugin host, at discovery (``ladle serve``,
    ``ladle plugins``, a worker process rebuilding its runtime), in the front process.

    :param register: the callback that records one runtime::

            register(name, factory, *, requires=(), extra=None, api_version=1, detect=None,
                     description="", capabilities=None)

        - ``name``: what a model's ``runtime = "..."`` names; letters, digits, ``-``, ``_``, ``.``;
        - ``factory``: a ``ladle.Runtime`` subclass, or a lazy ``"module:attribute"`` string so the
          framework is imported only when a model uses the runtime (keep it out of this hook);
        - ``requires``: module names the runtime imports, checked without importing them, and
          ``extra``: the pip extra that installs them (named in every missing-dependency message);
        - ``api_version``: the plugin API the runtime was written for (refused if newer than ladle's);
        - ``detect``: ``detect(version_directory) -> bool``, ``True`` when the folder holds an
          artifact this runtime serves (zero-config detection; keep it to file names and headers);
        - ``capabilities``: what the runtime can do whatever its artifact, read without importing
          it: ``preferred_batcher``, ``pads``, ``max_batch_rows``, ``steps`` (``ladle.RuntimeCapabilities``).

        A name registered twice (by two plugins) is refused naming both plugins.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def register_batchers(register: Register) -> None:
    """Register the batchers a plugin provides.

    Implemented by batcher plugins; called once per plugin host, at discovery.

    :param register: ``register(name, factory, *, requires=(), extra=None, api_version=1,
        description="")``; ``factory`` is a ``ladle.Batcher`` subclass (``ladle.QueueingBatcher`` for
        one that queues in the front process) or a lazy ``"module:attribute"`` string. It is called
        as ``factory(replicas, options, observer)`` once per served version, where ``options`` is the
        model's ``batcher`` table without ``name`` (parse it with ``ladle.parse_options``); it is also
        called once while the configuration is checked, before anything loads, to validate the
        options, and that object is dropped: construction must have no side effects (start tasks in
        ``start``).
    :returns: nothing.
    """


@hookspec
def register_routers(register: Register) -> None:
    """Register the routers a plugin provides.

    Implemented by router plugins; called once per plugin host, at discovery.

    :param register: ``register(name, factory, *, requires=(), extra=None, api_version=1,
        description="")``; ``factory`` is a ``ladle.Router`` subclass (``ladle.WeightedRouter`` for
        a weighted split) called as ``factory(options)`` once per model, and again whenever the
        controller switches a model's router. What it can do is declared on the class.
    :returns: nothing.
    """


@hookspec
def register_scaling_policies(register: Register) -> None:
    """Register the scaling policies a plugin provides.

    Implemented by scaler plugins; called once per plugin host, at discovery.

    :param register: ``register(name, factory, ...)``; ``factory`` is a ``ladle.ScalingPolicy``
        subclass called as ``factory(options)`` per version; its ``desired(metrics)`` turns the stats
        layer's windowed figures into an instance count on every tick of the scaling loop.
    :returns: nothing.
    """


@hookspec
def register_placements(register: Register) -> None:
    """Register the placements a plugin provides.

    Implemented by scaler plugins; called once per plugin host, at discovery.

    :param register: ``register(name, factory, ...)``; ``factory`` is a ``ladle.Placement``
        subclass called as ``factory(options, host)`` once per server (``options`` from
        ``[plugins.options.<name>]``); it decides where instances run (threads, worker processes,
        Ray actors, Kubernetes pods) and creates them with ``create(spec, index, config)``.
    :returns: nothing.
    """


@hookspec
def ladle_configure(config: ServerConfig) -> None:
    """Inspect or refuse the server's configuration.

    Called once per server, after ``ladle.toml`` and the model configs are read and validated and
    before any model loads.

    :param config: the whole server configuration; a plugin reads its own table with
        ``config.plugin_options(name)`` (``[plugins.options.<name>]``).
    :returns: nothing. Raise ``ladle.ConfigError`` (naming the key) to refuse the configuration:
        the server does not start.
    """


@hookspec
def ladle_startup(server: Any) -> None:
    """The server has loaded its models.

    Called once per server, on the event loop, after the models loaded and before the server
    reports ready.

    :param server: the ``ladle.server.Server`` (its ``manager``, ``controller``, ``telemetry``).
    :returns: nothing. An exception is logged and does not stop the server.
    """


@hookspec
def ladle_shutdown(server: Any) -> None:
    """The server is stopping.

    Called once per server, after in-flight requests are drained and every instance stopped.

    :param server: the ``ladle.server.Server``.
    :returns: nothing.
    """


@hookspec
def ladle_instance_state(model: str, version: str, instance: str, state: InstanceState) -> None:
    """An instance changed lifecycle state.

    Called on the control path (never per request) whenever an instance moves through loading,
    warming, ready, draining, stopped or failed, in the front process.

    :param model: the model's name.
    :param version: the version's name.
    :param instance: the instance's name within its version (``"0"``, ``"1"``...).
    :param state: the state it entered (``ladle.InstanceState``).
    :returns: nothing. An exception is logged and never fails the instance.
    """
