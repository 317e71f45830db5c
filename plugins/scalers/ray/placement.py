"""The ray placement: every instance a Ray actor, on an existing Ray cluster or a local Ray.

ladle keeps its own ingress, batching and routing in the front process and uses Ray only to
place instances: each instance is one actor, created from the serialisable ``RuntimeSpec``
(``RayExecutor``), so the scaling loop's desired instance count is the actor count and the
supervisor replaces an actor that died (its instance fails with ``InstanceFailedError``).

Server-wide options (``[plugins.options.ray]`` in ladle.toml):

- ``address``: the cluster to join: ``"auto"`` (the one ``ray start`` runs on this machine),
  ``"ray://head:10001"`` (Ray client) or ``"head:6379"``. Unset: the server starts a local Ray of
  its own, on loopback addresses only, and shuts it down at exit (several fronts of one server
  share one, started by the first front that needs it and shut down by it once the others let go);
- ``namespace`` (default ``"ladle"``): the Ray namespace of the actors;
- ``local_cpus`` / ``local_gpus``: what a local Ray offers (default: what the machine has);
- ``load_timeout`` (seconds, default 300): how long an actor may take to be placed and loaded
  (a cluster without room for it would otherwise keep it pending for ever).

Per model (``placement = {name = "ray", num_cpus = 2, num_gpus = 0.5, runtime_env = {...}}``):
``num_cpus`` (default: the instance's thread budget), ``num_gpus`` (fractions share a GPU;
default 1 for a ``cuda`` device, else 0), ``runtime_env`` (Ray's dict: ``env_vars``, ``pip``,
``working_dir``...), ``resources`` (custom resources) and ``compiled_graph`` (default true: batches
cross through a Ray compiled graph's shared-memory channels while they keep coming; false: plain
actor calls, which is also what an actor that several fronts share takes) with
``graph_idle_timeout`` (seconds without a batch after which the graph is torn down, freeing the core
its actor polls with; default 5, 0 keeps it). The model's artifact path must be
readable at the same path on the node that runs the actor (shared storage, or this machine).

When the server runs several front processes (``ladle serve --workers N``), the actors are named
after the server and the instance, and every front's instance attaches to the same actor: the
fronts share the instances, each with its own batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from ladle import (
    ConfigError,
    Instance,
    InstanceFailedError,
    ModelConfig,
    Placement,
    PluginHost,
    PluginOptions,
    RuntimeInfo,
    RuntimeSpec,
    parse_options,
)

from .executor import RayExecutor

__all__ = ["RayConnection", "RayModelOptions", "RayOptions", "RayPlacement"]

log = logging.getLogger(__name__)

#: Set by ``ladle serve --workers N`` in each front process: a directory private to the server's
#: fronts (removed when the server exits).
FRONT_DIR_VARIABLE = "LADLE_FRONT_DIR"
#: Ray binds and advertises loopback addresses only when this is "0" (read when ray is imported).
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SIGNAL_VARIABLE = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


class RayOptions(PluginOptions):
    """Server-wide options of the ray placement."""

    address: str | None = Field(default=None, min_length=1)
    namespace: str = Field(default="ladle", min_length=1)
    local_cpus: int | None = Field(default=None, ge=1)
    local_gpus: int | None = Field(default=None, ge=0)
    load_timeout: float = Field(default=300.0, gt=0)


class RayModelOptions(PluginOptions):
    """A model's own options of the ray placement (``config.placement.options``)."""

    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    runtime_env: dict[str, Any] | None = None
    resources: dict[str, float] | None = None
    compiled_graph: bool = True
    graph_idle_timeout: float = Field(default=5.0, ge=0)


class RayConnection:
    """This process's connection to Ray: joined, started here, or found already open."""

    def __init__(self, settings: RayOptions) -> None:
        self.settings = settings
        self.mode = "not connected"  # "joined", "started", "shared" (another front started it), "existing"
        self.address: str | None = None
        self._lock = threading.Lock()
        self._ray: Any = None
        self._users: IO[str] | None = None
        self._front_dir = os.environ.get(FRONT_DIR_VARIABLE)

    @property
    def ray(self) -> Any:
        """The ``ray`` module (imported on first use)."""
        if self._ray is None:
            # Ray's failure signal handler would end this process on SIGTERM instead of letting the
            # server drain; it is read when ray is imported (the actors' processes keep theirs).
            saved = os.environ.get(SIGNAL_VARIABLE)
            os.environ[SIGNAL_VARIABLE] = "1"
            try:
                import ray
            finally:
                if saved is None:
                    os.environ.pop(SIGNAL_VARIABLE, None)
                else:
                    os.environ[SIGNAL_VARIABLE] = saved
            self._ray = ray
        return self._ray

    @property
    def group(self) -> str | None:
        """The name the fronts of one server share (``None`` for a lone front)."""
        return Path(self._front_dir).name if self._front_dir else None

    def ensure(self) -> None:
        """Connect once (thread-safe; blocking: ``ray.init`` of a local Ray takes seconds)."""
        with self._lock:
            if self.mode != "not connected":
                return
            if self.settings.address is None:  # a Ray of this server's own: on loopback only
                os.environ.setdefault(LOOPBACK_VARIABLE, "0")
            ray = self.ray
            if ray.is_initialized():  # the embedding program (a test session, a notebook) owns it
                self.mode, self.address = "existing", ray.get_runtime_context().gcs_address
                return
            if self.settings.address is not None:
                ray.init(self.settings.address, namespace=self.settings.namespace, log_to_driver=False)
                self.mode, self.address = "joined", self.settings.address
            elif self._front_dir is not None:
                self._join_fronts(Path(self._front_dir))
            else:
                self._start_local()
                self.mode = "started"

    def _start_local(self) -> None:
        self.ray.init(
            address="local",
            num_cpus=self.settings.local_cpus,
            num_gpus=self.settings.local_gpus,
            namespace=self.settings.namespace,
            include_dashboard=False,
            log_to_driver=False,
        )
        self.address = self.ray.get_runtime_context().gcs_address

    def _join_fronts(self, directory: Path) -> None:
        """The first front to get here starts the local Ray and writes its address; the others join
        it. Every front holds a shared lock on ``ray.users`` while connected (see ``close``)."""
        recorded = directory / "ray.address"
        with (directory / "ray.lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                address = recorded.read_text().strip() if recorded.is_file() else ""
                joined = False
                if address:
                    try:
                        self.ray.init(address=address, namespace=self.settings.namespace, log_to_driver=False)
                        joined = True
                    except Exception as exc:  # its front is gone, and the local Ray with it
                        log.warning("the local Ray at %s is gone (%s); starting another", address, exc)
                if joined:
                    self.mode, self.address = "shared", address
                else:
                    self._start_local()
                    self.mode = "started"
                    recorded.write_text(self.address or "")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._users = (directory / "ray.users").open("a+")
        fcntl.flock(self._users, fcntl.LOCK_SH)

    def close(self, wait: float = 60.0) -> None:
        """Disconnect; a local Ray started here is shut down, once the other fronts let go (at most
        ``wait`` seconds). A Ray this placement did not connect to is left as it is."""
        with self._lock:
            mode, self.mode = self.mode, "closed"
            users, self._users = self._users, None
            if mode in ("not connected", "closed", "existing"):
                return
            if users is not None:
                if mode == "started":
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline:
                        try:
                            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            time.sleep(0.1)
                    if self._front_dir is not None:
                        with contextlib.suppress(OSError):
                            (Path(self._front_dir) / "ray.address").unlink()
                users.close()
            self.ray.shutdown()


class RayPlacement(Placement):
    """Creates each instance as a Ray actor (``RayExecutor``); one object per server."""

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        super().__init__(options, host)
        self.settings = parse_options(RayOptions, options, "placement 'ray'")
        self.connection = RayConnection(self.settings)
        self._executors: dict[tuple[str, str, int], RayExecutor] = {}
        self._lone_group = uuid.uuid4().hex[:12]

    def model_options(self, model: str, config: ModelConfig) -> RayModelOptions:
        """The model's placement options, checked (``ConfigError`` names each bad one)."""
        return parse_options(RayModelOptions, config.placement.options, f"placement 'ray' of model {model!r}")

    def actor_options(self, spec: RuntimeSpec, index: int, chosen: RayModelOptions) -> dict[str, Any]:
        """What ``ActorClass.options`` gets for this instance, from its model's placement options."""
        gpu = spec.device.startswith("cuda")
        num_gpus = chosen.num_gpus if chosen.num_gpus is not None else (1.0 if gpu else 0.0)
        if gpu and num_gpus == 0:
            raise ConfigError(
                f"model {spec.model!r}: device {spec.device!r} with num_gpus = 0; Ray gives the actor no GPU",
                model=spec.model,
                key="placement.num_gpus",
            )
        options: dict[str, Any] = {
            "num_cpus": chosen.num_cpus if chosen.num_cpus is not None else float(spec.threads),
            "num_gpus": num_gpus,
            "namespace": self.settings.namespace,
            "max_restarts": 0,  # the supervisor rebuilds and warms a replacement; Ray would not warm it
            "max_concurrency": 1,
        }
        if chosen.runtime_env is not None:
            options["runtime_env"] = dict(chosen.runtime_env)
        if chosen.resources is not None:
            options["resources"] = dict(chosen.resources)
        group = self.connection.group
        if group is not None:  # fronts of one server share the actor of each instance
            options["name"] = f"{group}/{spec.model}/{spec.version}/{index}"
            options["get_if_exists"] = True
        return options

    def create(self, spec: RuntimeSpec, index: int, config: ModelConfig) -> Instance:
        chosen = self.model_options(spec.model, config)
        options = self.actor_options(spec, index, chosen)
        if spec.device.startswith("cuda"):
            spec = replace(spec, device="cuda:0")  # Ray shows the actor only its own GPUs
        key = (spec.model, spec.version, index)
        # A graph's loop holds the actor for its driver: an actor the fronts share takes plain calls.
        compiled = chosen.compiled_graph and self.connection.group is None
        executor = PlacedActor(
            spec,
            self.host,
            self,
            key,
            options,
            compiled_graph=compiled,
            graph_idle_timeout=chosen.graph_idle_timeout,
        )
        self._executors[key] = executor
        return Instance(spec, executor, name=str(index))

    def _stopped(self, executor: PlacedActor) -> None:
        if self._executors.get(executor.key) is executor:
            del self._executors[executor.key]

    def describe(self) -> dict[str, Any]:
        connection = self.connection
        actors = []
        for (model, version, index), executor in sorted(self._executors.items()):
            options = executor.actor_options
            actors.append(
                {
                    "model": model,
                    "version": version,
                    "instance": index,
                    "name": options.get("name"),
                    "num_cpus": options["num_cpus"],
                    "num_gpus": options["num_gpus"],
                    "pid": executor.placed.get("pid"),
                    "node": executor.placed.get("node"),
                    "calls": "compiled_graph" if executor.through_graph else "actor_calls",
                }
            )
        return {
            "ray": {
                "mode": connection.mode,
                "address": connection.address,
                "namespace": self.settings.namespace,
            },
            "actors": actors,
        }

    async def close(self) -> None:
        """Disconnect from Ray; a local Ray started by this server is shut down."""
        await asyncio.to_thread(self.connection.close)


class PlacedActor(RayExecutor):
    """A ``RayExecutor`` the placement keeps track of, with a bounded time to be placed and loaded."""

    def __init__(
        self,
        spec: RuntimeSpec,
        host: PluginHost,
        placement: RayPlacement,
        key: tuple[str, str, int],
        options: Mapping[str, Any],
        *,
        compiled_graph: bool = True,
        graph_idle_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            spec,
            host,
            placement.connection,
            options,
            compiled_graph=compiled_graph,
            graph_idle_timeout=graph_idle_timeout,
        )
        self.placement = placement
        self.key = key

    async def load(self) -> None:
        timeout = self.placement.settings.load_timeout
        try:
            await asyncio.wait_for(super().load(), timeout)
        except TimeoutError:
            self._kill()
            model, version, index = self.key
            raise InstanceFailedError(
                f"{model}/{version} instance {index}: its Ray actor was not placed and loaded within "
                f"{timeout:g} s (asked for {self.actor_options['num_cpus']:g} CPUs and "
                f"{self.actor_options['num_gpus']:g} GPUs; Ray has {self._available()} free)",
                model=model,
                version=version,
            ) from None

    def _available(self) -> str:
        try:
            free = self._ray.available_resources()
        except Exception:
            return "an unknown amount"
        return f"{free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs"

    async def warmup(self) -> RuntimeInfo:
        info = await super().warmup()
        details = {**info.details, "ray_node": self.placed.get("node"), "ray_pid": self.placed.get("pid")}
        return replace(info, details=details)

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.placement._stopped(self)
