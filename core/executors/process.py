"""The worker-process executor: the runtime rebuilt in a child process from its spec.

Numeric tensors cross through shared-memory arenas (a file in /dev/shm mapped by both sides, one
arena per direction, grown by replacement); BYTES tensors and control messages go through a pipe.
A child that crashes fails its instance, not the server. Each worker has its own CUDA context, so
per-process limits such as MPS's active-thread percentage can be set through ``env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import multiprocessing
import os
import tempfile
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..envelope import Arrays, Batch, BatchItem
from ..errors import InstanceFailedError, LadleError, ModelNotReadyError
from ..plugin_host import PluginHost
from ..runtime import Runtime, RuntimeSpec, process_rss_bytes
from ..threads import apply_process_budget
from .base import Executor, RuntimeInfo, build_runtime
from .dedicated import DedicatedThread
from .isolation import ItemResult, execute_isolated

__all__ = ["Arena", "ProcessExecutor"]

logger = logging.getLogger("ladle.executors")

_ALIGN = 64
Layout = list[tuple[str, str, tuple[int, ...], int]]


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class Arena:
    """A growable shared-memory region written by one side and read by the other."""

    def __init__(self, owner: bool) -> None:
        self.owner = owner
        self.path = ""
        self._map: mmap.mmap | None = None

    def _create(self, size: int) -> None:
        self.close()
        fd, path = tempfile.mkstemp(prefix="ladle-", dir=_shm_dir())
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path

    def attach(self, path: str) -> None:
        if path == self.path and self._map is not None:
            return
        self.close()
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.path = path

    def write(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> tuple[str, Layout, dict[str, Any]]:
        """Copy numeric arrays in; returns (arena path, layout, arrays that must travel by pipe)."""
        layout: Layout = []
        by_pipe: dict[str, Any] = {}
        offset = 0
        numeric = []
        for name, array in arrays.items():
            if array.dtype.hasobject:
                by_pipe[name] = array
                continue
            numeric.append((name, array, offset))
            offset += (array.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        if numeric and (self._map is None or len(self._map) < offset):
            self._create(max(offset, 1 << 20, 2 * len(self._map) if self._map else 0))
        for name, array, start in numeric:
            assert self._map is not None
            view: np.ndarray[Any, Any] = np.ndarray(array.shape, array.dtype, self._map, start)
            view[...] = array
            layout.append((name, array.dtype.str, array.shape, start))
        return self.path, layout, by_pipe

    def read(self, layout: Layout, copy: bool) -> Arrays:
        arrays: Arrays = {}
        for name, dtype, shape, start in layout:
            assert self._map is not None
            view: np.ndarray[Any, Any] = np.ndarray(shape, np.dtype(dtype), self._map, start)
            arrays[name] = view.copy() if copy else view
        return arrays

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still refers to it; it goes with the process
                self._map.close()
            self._map = None
        if self.owner and self.path:
            Path(self.path).unlink(missing_ok=True)
        self.path = ""


def _child_main(conn: Connection, spec_data: dict[str, Any], disabled: list[str], modules: list[str]) -> None:
    """Worker process entry point: build the runtime, then serve requests from the pipe."""
    spec = RuntimeSpec.from_dict(spec_data)
    apply_process_budget(spec.threads)
    inbound = Arena(owner=False)
    outbound = Arena(owner=True)
    runtime: Runtime | None = None
    host: PluginHost | None = None
    rss_before = process_rss_bytes()
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            kind = message[0]
            try:
                if kind == "load":
                    host = PluginHost(disabled)
                    for module in modules:
                        host.add_module(module)
                    host.discover()
                    runtime = build_runtime(spec, host)
                    runtime.load()
                    conn.send(("ok", None))
                elif kind == "warmup":
                    assert runtime is not None and host is not None
                    runtime.warmup()
                    declared = host.get("runtime", spec.plugin).capabilities
                    conn.send(("ok", RuntimeInfo.of(runtime, rss_before, declared)))
                elif kind == "execute":
                    assert runtime is not None
                    _, path, layout, by_pipe, items = message
                    if layout:
                        inbound.attach(path)
                    inputs = inbound.read(layout, copy=False)
                    inputs.update(by_pipe)
                    results = execute_isolated(runtime, Batch(inputs, items))
                    conn.send(("ok", _pack_results(outbound, results)))
                elif kind == "stop":
                    if runtime is not None:
                        runtime.unload()
                    conn.send(("ok", None))
                    return
            except BaseException as exc:
                error = (
                    exc
                    if isinstance(exc, LadleError)
                    else InstanceFailedError(
                        f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5)
                    )
                )
                conn.send(("error", error))
    finally:
        outbound.close()
        inbound.close()


def _pack_results(arena: Arena, results: list[ItemResult]) -> tuple[str, Layout, dict[str, Any], list[Any]]:
    """All items' outputs in one arena write, keyed ``"<item>/<output>"``; errors travel by pipe."""
    flat: Arrays = {}
    shape: list[Any] = []
    for index, result in enumerate(results):
        if isinstance(result, LadleError):
            shape.append(result)
        else:
            shape.append(list(result))
            for name, array in result.items():
                flat[f"{index}/{name}"] = np.ascontiguousarray(array)
    path, layout, by_pipe = arena.write(flat)
    return path, layout, by_pipe, shape


def _unpack_results(arena: Arena, packed: tuple[str, Layout, dict[str, Any], list[Any]]) -> list[ItemResult]:
    path, layout, by_pipe, shape = packed
    if layout:
        arena.attach(path)
    flat = arena.read(layout, copy=True)
    flat.update(by_pipe)
    results: list[ItemResult] = []
    for index, entry in enumerate(shape):
        if isinstance(entry, LadleError):
            results.append(entry)
        else:
            results.append({name: flat[f"{index}/{name}"] for name in entry})
    return results


class ProcessExecutor(Executor):
    """Runs the runtime in a spawned child process; the child is rebuilt from the spec alone."""

    def __init__(self, spec: RuntimeSpec, host: PluginHost, env: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self._disabled = sorted(host.disabled)
        self._modules = [name for name, record in host.records.items() if record.source == name]
        self._env = dict(env or {})
        self._arena = Arena(owner=True)
        self._results = Arena(owner=False)
        self._thread = DedicatedThread(f"ladle-worker-{spec.model}")
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._failed = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def lost(self) -> str:
        process = self._process
        if self._failed:
            return self._failed
        if process is None or self._conn is None or process.is_alive():
            return ""
        return (  # no process id: this message can reach a client
            f"the worker process of model {self.spec.model!r} version {self.spec.version!r} "
            f"died (exit code {process.exitcode})"
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment variables the worker process starts with, beyond the front's own."""
        return dict(self._env)

    def _roundtrip(self, message: tuple[Any, ...]) -> Any:
        conn = self._conn
        if conn is None or self._failed:
            raise InstanceFailedError(self._failed or "worker process is not running")
        try:
            conn.send(message)
            status, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self._process.exitcode if self._process is not None else None
            if self._process is not None:
                self._process.join(timeout=1)
                code = self._process.exitcode
            self._failed = (
                f"the worker process of model {self.spec.model!r} version {self.spec.version!r} "
                f"died (exit code {code})"
            )
            logger.error("%s; its process id was %s", self._failed, self.pid)
            raise InstanceFailedError(
                self._failed, model=self.spec.model, version=self.spec.version, pid=self.pid
            ) from exc
        if status == "error":
            raise payload
        return payload

    async def _call(self, *message: Any) -> Any:
        return await self._thread.call(self._roundtrip, message)

    async def load(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)  # spawn copies the environment at start
        try:
            self._process = context.Process(
                target=_child_main,
                args=(child, self.spec.to_dict(), self._disabled, self._modules),
                name=f"ladle-worker-{self.spec.model}-{self.spec.version}",
                daemon=True,
            )
            self._process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        child.close()
        self._conn = parent
        await self._call("load")

    async def warmup(self) -> RuntimeInfo:
        info: RuntimeInfo = await self._call("warmup")
        return info

    def _execute(self, batch: Batch) -> list[ItemResult]:
        path, layout, by_pipe = self._arena.write(batch.inputs)
        items = [
            BatchItem(i.request_id, i.rows, dict(i.parameters), i.deadline, i.cancelled, i.extents)
            for i in batch.items
        ]
        packed = self._roundtrip(("execute", path, layout, by_pipe, items))
        return _unpack_results(self._results, packed)

    async def execute(self, batch: Batch) -> list[ItemResult]:
        if self._conn is None:
            raise ModelNotReadyError("worker process is not started")
        return await self._thread.call(self._execute, batch)

    async def stop(self) -> None:
        if self._conn is not None and not self._failed:
            with contextlib.suppress(LadleError, TimeoutError):
                await asyncio.wait_for(self._call("stop"), 10)
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._arena.close()
        self._results.close()
        self._thread.close()
