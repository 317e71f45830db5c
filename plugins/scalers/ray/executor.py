"""One instance as a Ray actor: the actor rebuilds the runtime from the spec, the executor calls it.

The actor (``RuntimeActor``) gets the serialisable ``RuntimeSpec`` as a dict, builds a fresh
``ladle.PluginHost`` (the front's disabled plugins and extra modules passed along) and the runtime
through it (``ladle.build_runtime``), and runs each batch with ``ladle.execute_isolated``, so per-item
error isolation, skipped cancelled or expired items and the warm-up report are exactly those of an
in-process instance.

Batches cross as numpy arrays in the call's arguments and return value. Ray serialises them with
pickle protocol 5 out-of-band buffers: an argument or result above Ray's inline limit (100 KiB) goes
into the object store once and is read there without a copy (read-only arrays); smaller ones travel
inline with the call, which is cheaper than a ``ray.put`` (measured in ``benchmarks/ray_placement.py``).
Deadlines cross as seconds left, since the actor may run on a machine with another monotonic clock.

While batches keep coming they go through a Ray compiled graph of the actor's ``execute``
(``compiled_graph = true``, the default; ``ladle.plugins.scalers.ray.graph``): shared-memory
channels instead of Ray's task path, a tenth of a plain call's round trip on one machine. Plain
actor calls serve while it compiles, once it is torn down after ``graph_idle_timeout`` seconds
without a batch, where it cannot be compiled, and for an actor several fronts share (a graph's
execution loop holds the actor for the front that compiled it).

A named actor can serve several front processes (``ladle serve --workers N``): each front's
executor attaches on load and detaches on stop, and the last one out kills the actor. An actor that
dies (killed, its node lost, its owner gone) fails its instance with ``InstanceFailedError``, so the
supervisor replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from ladle import (
    Arrays,
    Batch,
    BatchItem,
    Executor,
    InstanceFailedError,
    ItemResult,
    LadleError,
    ModelNotReadyError,
    PluginHost,
    Runtime,
    RuntimeInfo,
    RuntimeSpec,
    build_runtime,
    execute_isolated,
    process_rss_bytes,
)

from .graph import WarmGraph

__all__ = ["ItemTuple", "RayExecutor", "RuntimeActor"]

#: A batch item as it crosses: (request id, rows, parameters, seconds left or None, cancelled,
#: own sizes in a padded batch or None).
ItemTuple = tuple[str, int, Mapping[str, Any], float | None, bool, tuple[int, ...] | None]


class RuntimeActor:
    """The body of the Ray actor that hosts one runtime instance (used as ``ray.remote(RuntimeActor)``).

    A plain class, so it imports no Ray and can be tested alone. Its methods run one at a time on
    the actor's thread, but for ``execute`` from a compiled graph, which runs on the graph's own
    thread: batches still run one at a time (a plain call may overlap a graph's first batch).
    """

    def __init__(self) -> None:
        self._runtime: Runtime | None = None
        self._host: PluginHost | None = None
        self._info: RuntimeInfo | None = None
        self._rss_before = 0
        self._clients = 0
        self._closed = threading.Event()
        self._one_batch = threading.Lock()

    def load(self, spec_data: dict[str, Any], disabled: list[str], modules: list[str]) -> dict[str, Any]:
        """Build and load the runtime (once: a second front attaching finds it loaded)."""
        self._clients += 1
        if self._runtime is None:
            spec = RuntimeSpec.from_dict(spec_data)
            host = PluginHost(disabled)
            for module in modules:
                host.add_module(module)
            host.discover()
            self._rss_before = process_rss_bytes()
            try:
                runtime = build_runtime(spec, host)
                runtime.load()
            except BaseException:
                self._clients -= 1
                raise
            self._runtime, self._host = runtime, host
        return {"pid": os.getpid(), "node": socket.gethostname(), "clients": self._clients}

    def warmup(self) -> RuntimeInfo:
        """Warm up once; later calls return the first report."""
        if self._info is None:
            runtime, host = self._ready(), self._host
            assert host is not None
            runtime.warmup()
            declared = host.get("runtime", runtime.spec.plugin).capabilities
            self._info = RuntimeInfo.of(runtime, self._rss_before, declared)
        return self._info

    def execute(self, inputs: Arrays, items: list[ItemTuple]) -> list[ItemResult]:
        now = time.monotonic()
        batch = Batch(
            inputs,
            [
                BatchItem(rid, rows, params, None if left is None else now + left, cancelled, extents)
                for rid, rows, params, left, cancelled, extents in items
            ],
        )
        with self._one_batch:
            return execute_isolated(self._ready(), batch)

    def detach(self) -> int:
        """One front let go; the runtime unloads when none is left. Returns the fronts still attached."""
        self._clients = max(0, self._clients - 1)
        if not self._clients and self._runtime is not None:
            runtime, self._runtime = self._runtime, None
            runtime.unload()
            self._closed.set()
        return self._clients

    def watch(self) -> None:
        """Returns when the runtime unloads; called in the ``watch`` concurrency group, so that the
        caller's pending reference fails the moment the actor dies, between batches too."""
        self._closed.wait()

    def _ready(self) -> Runtime:
        if self._runtime is None:
            raise ModelNotReadyError("the runtime of this actor is not loaded")
        return self._runtime


class RayExecutor(Executor):
    """Runs one instance in a Ray actor; ``actor_options`` go to ``ActorClass.options``.

    ``connection`` owns this process's link to Ray: ``connection.ensure()`` connects (blocking,
    run off the event loop) and ``connection.ray`` is the imported ``ray`` module.
    """

    def __init__(
        self,
        spec: RuntimeSpec,
        host: PluginHost,
        connection: Any,
        actor_options: Mapping[str, Any],
        *,
        compiled_graph: bool = True,
        graph_idle_timeout: float = 5.0,
    ) -> None:
        self.spec = spec
        self.compiled_graph = compiled_graph
        self.graph_idle_timeout = graph_idle_timeout
        self._graph: WarmGraph | None = None
        self._disabled = sorted(host.disabled)
        self._modules = [name for name, record in host.records.items() if record.source == name]
        self._connection = connection
        self._ray: Any = None
        self.actor_options = dict(actor_options)
        self._actor: Any = None
        self._failed = ""
        self._watcher: asyncio.Task[None] | None = None
        #: Where the actor runs: ``{"pid", "node", "clients"}`` once loaded.
        self.placed: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        pid = self.placed.get("pid")
        return int(pid) if pid is not None else None

    @property
    def lost(self) -> str:
        """Why the actor can run no more batches (it died), noticed between batches too."""
        return self._failed

    @property
    def through_graph(self) -> bool:
        """Whether batches go through a compiled graph now (else plain actor calls)."""
        return self._graph is not None and self._graph.ready

    @property
    def actor(self) -> Any:
        """The Ray actor handle (``None`` before ``load``)."""
        return self._actor

    async def _call(self, method: str, *args: Any) -> Any:
        if self._actor is None or self._failed:
            raise InstanceFailedError(self._failed or "the actor is not started")
        try:
            return await getattr(self._actor, method).remote(*args)
        except self._ray.exceptions.RayError as exc:
            raise await self._failure(method, exc) from exc

    async def _failure(self, method: str, exc: Exception) -> LadleError:
        """What a failed call raises: a ladle error the runtime raised, else ``InstanceFailedError``
        (and the actor is done for)."""
        if isinstance(exc, self._ray.exceptions.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, LadleError):
                return cause
            self._fail(f"the actor failed in {method}: {cause or exc}")
            await asyncio.to_thread(self._kill)
        else:  # the actor died, its node or an object was lost, or the graph was torn down
            self._fail(f"the actor of {self.spec.model}/{self.spec.version} died: {_first_line(exc)}")
        return InstanceFailedError(self._failed, model=self.spec.model, version=self.spec.version)

    def _fail(self, message: str) -> None:
        if not self._failed:
            self._failed = message

    async def load(self) -> None:
        try:
            await asyncio.to_thread(self._connection.ensure)
        except Exception as exc:
            raise InstanceFailedError(
                f"cannot connect to Ray: {type(exc).__name__}: {_first_line(exc)}",
                model=self.spec.model,
                version=self.spec.version,
            ) from exc
        self._ray = self._connection.ray
        actor_class = self._ray.remote(concurrency_groups={"watch": 1})(RuntimeActor)
        self._actor = actor_class.options(**self.actor_options).remote()
        self.placed = await self._call("load", self.spec.to_dict(), self._disabled, self._modules)
        if self.compiled_graph:
            name = f"{self.spec.model}/{self.spec.version}"
            self._graph = WarmGraph(self._actor, name, self.graph_idle_timeout)
        self._watcher = asyncio.create_task(self._watch(), name=f"ladle-ray-watch-{self.spec.model}")

    async def _watch(self) -> None:
        try:
            await self._actor.watch.options(concurrency_group="watch").remote()
        except self._ray.exceptions.RayError as exc:
            self._fail(f"the actor of {self.spec.model}/{self.spec.version} died: {_first_line(exc)}")

    async def warmup(self) -> RuntimeInfo:
        info: RuntimeInfo = await self._call("warmup")
        return info

    async def execute(self, batch: Batch) -> list[ItemResult]:
        if self._actor is None:
            raise ModelNotReadyError("the actor is not started")
        now = time.monotonic()
        items: list[ItemTuple] = [
            (
                item.request_id,
                item.rows,
                item.parameters,
                _left(item.deadline, now),
                item.cancelled,
                item.extents,
            )
            for item in batch.items
        ]
        warm = self._graph
        graph = warm.use() if warm is not None and not self._failed else None
        if warm is None or graph is None:
            results: list[ItemResult] = await self._call("execute", batch.inputs, items)
            return results
        try:
            return await warm.run(graph, batch.inputs, items)
        except Exception as exc:  # the runtime's error, or the graph and its actor are gone
            raise await self._failure("execute", exc) from exc

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        graph, self._graph = self._graph, None
        if graph is not None:  # before detaching: a graph's loop keeps the actor's attention
            await graph.close()
        if self._actor is None:
            return
        remaining = 0
        if not self._failed:
            try:
                remaining = await asyncio.wait_for(self._call("detach"), 30)
            except (LadleError, TimeoutError):
                remaining = 0
        if not remaining:  # the last front out (or a failed actor): kill it
            await asyncio.to_thread(self._kill)
        self._actor = None

    def _kill(self) -> None:
        actor = self._actor
        if actor is None:
            return
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone, or the cluster is: nothing left to stop
            return


def _left(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else deadline - now


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
