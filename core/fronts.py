"""Several front processes on one port: ``ladle serve --workers N``.

The parent process starts N fronts and supervises them; it serves nothing itself. Each front is a
whole ladle server (HTTP ingress, admission, batchers, telemetry) that listens on the same port
through its own ``SO_REUSEPORT`` socket, so the kernel spreads connections over the fronts.

What the fronts share, and what they do not:

- **The port.** A front that dies loses the connections queued on its socket; the parent starts
  it again (a front that exits by itself, on a configuration error say, stops the server).
- **Instances, with the ray placement.** Actors are named after the server and the instance, and
  every front attaches its own batcher to the same actors. With threads or worker processes
  (``executor = "process"``) each front has its own instances: N copies of each model.
- **Managed-mode state, with one writer.** Every front opens the one SQLite deployment store
  (WAL mode: readers never block the writer). Front 0 is the writer: it seeds or restores the
  store, runs guarded rollouts and applies every change. A change sent to another front (deploy,
  traffic, rollback, retire) is relayed to the writer over a private loopback port and answered
  once the receiving front has applied it too. Each follower polls the store's
  ``PRAGMA data_version`` every ``SYNC_INTERVAL`` seconds and, when another connection committed,
  loads and unloads versions and swaps routers, resilience settings and routing tables to match,
  so a traffic change made through any front reaches every front within a second. Followers
  write nothing but their own circuit-breaker events.
- **Not shared:** batch queues, response caches, circuit breakers, the samples a guarded rollout
  judges (the writer's share of the traffic) and recorded predictions for feedback (per front).

Plugins learn of the group through the environment of each front: ``LADLE_FRONT_INDEX``,
``LADLE_FRONT_COUNT`` and ``LADLE_FRONT_DIR`` (a directory private to the server's fronts, removed
when the server exits, where plugins may coordinate through files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import LadleError, ServerBusyError

if TYPE_CHECKING:
    from .deployments.controller import DeploymentController
    from .repository import ModelPlan
    from .server import Server

__all__ = ["Front", "FrontLink", "RelayedError", "current_front", "reuse_port_socket", "run_fronts"]

logger = logging.getLogger("ladle.fronts")

FRONT_INDEX_VARIABLE = "LADLE_FRONT_INDEX"
FRONT_COUNT_VARIABLE = "LADLE_FRONT_COUNT"
FRONT_DIR_VARIABLE = "LADLE_FRONT_DIR"
#: Seconds between two looks at the store's data version in a follower front.
SYNC_INTERVAL = 0.2
#: The file in the group directory that names the writer's private address.
WRITER_FILE = "writer.url"
#: Exit codes with which a front stops the whole server: a clean stop, models that failed to load,
#: bad configuration, a failed start (uvicorn's 3: a port it could not bind, say).
_DELIBERATE_EXITS = (0, 1, 2, 3)
_MAX_RESTARTS = 10


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not yet listening).

    It is made with an explicit ``IPPROTO_TCP``: asyncio sets ``TCP_NODELAY`` only on accepted
    sockets whose protocol says TCP, and without it every small response waits for a delayed ACK.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Front:
    """This process's place in a group of fronts (from the environment the parent set)."""

    index: int
    count: int
    directory: Path

    @property
    def writer(self) -> bool:
        """Front 0 writes the deployment store; the others follow it."""
        return self.index == 0

    def sockets(self, host: str, port: int) -> list[socket.socket]:
        """The sockets this front serves on: the shared port, plus the writer's private one."""
        sockets = [reuse_port_socket(host, port)]
        if self.writer:
            private = reuse_port_socket("127.0.0.1", 0)
            bound = private.getsockname()[1]
            sockets.append(private)
            temporary = self.directory / f".{WRITER_FILE}.tmp"
            temporary.write_text(f"http://127.0.0.1:{bound}")
            temporary.replace(self.directory / WRITER_FILE)
        return sockets

    def attach(self, server: Server) -> None:
        """Give a managed server's controller its link to the other fronts (static mode: none)."""
        if server.controller.managed:
            server.controller.front = FrontLink(self, server.controller)


def current_front() -> Front | None:
    """The front this process is, when ``ladle serve --workers N`` started it."""
    directory = os.environ.get(FRONT_DIR_VARIABLE)
    index = os.environ.get(FRONT_INDEX_VARIABLE)
    count = os.environ.get(FRONT_COUNT_VARIABLE)
    if not directory or index is None or count is None:
        return None
    return Front(int(index), int(count), Path(directory))


class RelayedError(LadleError):
    """The writer front refused a relayed change: its status and JSON body, passed on unchanged."""

    body: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.body)


_relayed_classes: dict[int, type[RelayedError]] = {}


def _relayed(status: int, body: dict[str, Any]) -> RelayedError:
    cls = _relayed_classes.get(status)
    if cls is None:
        cls = _relayed_classes[status] = type(f"Relayed{status}", (RelayedError,), {"status": status})
    error = cls(str(body.get("error", f"the writer front answered {status}")))
    error.body = body
    return error


class FrontLink:
    """A managed controller's link to the other fronts: followers follow the store and relay changes."""

    def __init__(self, front: Front, controller: DeploymentController) -> None:
        self.front = front
        self.controller = controller
        self._task: asyncio.Task[None] | None = None
        self._applied: dict[str, tuple[Any, ...]] = {}
        self._sync_lock = asyncio.Lock()
        self._client: Any = None

    @property
    def follower(self) -> bool:
        return not self.front.writer

    # following the store ---------------------------------------------------------------------

    async def follow(self, plans: list[ModelPlan] | None) -> None:
        """A follower's start: what the store lists (the config's models while the writer is still
        seeding an empty store), then a background task that keeps up with it."""
        store = self.controller.store
        assert store is not None
        seen = await asyncio.to_thread(store.data_version)
        if await asyncio.to_thread(store.is_empty):
            await self.controller.manager.load_all(plans)
        await self.sync()
        self._task = asyncio.create_task(self._poll(seen), name="ladle-front-sync")

    async def _poll(self, seen: int) -> None:
        store = self.controller.store
        assert store is not None
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                version = await asyncio.to_thread(store.data_version)
                if version != seen:
                    seen = version
                    await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed look must not end the following
                logger.exception("front %d: following the deployment store failed", self.front.index)

    async def sync(self) -> None:
        """Make this front serve what the store says: versions, routers, resilience, splits."""
        from .config import MODEL_CONFIG_FILE, merge_model_config
        from .deployments.restore import LOADED, message_of
        from .deployments.router_policy import current_split

        controller = self.controller
        manager = controller.manager
        store = controller.store
        assert store is not None
        async with self._sync_lock:
            for record in await asyncio.to_thread(store.models):
                name = record.name
                deployments = await asyncio.to_thread(store.deployments, name)
                wanted = {d.version for d in deployments if d.status in LOADED}
                split = {d.version: d.traffic for d in deployments if d.traffic > 0}
                endpoint = manager.models.get(name)
                for version in sorted(wanted - set(endpoint.versions if endpoint else ())):
                    try:
                        config = merge_model_config(
                            controller.config, name, manager.repository.model_dir(name) / MODEL_CONFIG_FILE
                        )
                        spec = manager.repository.spec(name, version, config, manager.host)
                        await manager.load_version(name, version, spec, endpoint=endpoint, traffic=False)
                    except Exception as exc:  # the writer loaded it; this front reports and serves the rest
                        logger.error(
                            "front %d: %s/%s failed to load: %s",
                            self.front.index,
                            name,
                            version,
                            message_of(exc),
                        )
                    endpoint = manager.models.get(name)
                if endpoint is None:
                    continue
                for version in sorted(set(endpoint.versions) - wanted):
                    if version not in split:
                        await manager.unload_version(name, version)
                applied = (
                    record.router,
                    orjson.dumps(record.router_options, option=orjson.OPT_SORT_KEYS),
                    orjson.dumps(record.options, option=orjson.OPT_SORT_KEYS),
                )
                previous = self._applied.get(name)
                if previous != applied:
                    if record.router is not None:
                        built = controller.router_policy.build(record.router, record.router_options)
                        endpoint.set_router(built, record.router)
                    if previous is not None and previous[2] != applied[2]:
                        controller._delivery(endpoint).configure(controller._configured_resilience(endpoint))
                    self._applied[name] = applied
                live = {v: w for v, w in split.items() if v in endpoint.versions}
                if live and live != current_split(endpoint):
                    manager.publish(name, live)
                controller._sync_delivery(endpoint)

    # relaying changes to the writer ------------------------------------------------------------

    async def relay(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Send a change to the writer front, then catch up with the store before answering."""
        import httpx

        from .deployments.auth import configured_tokens

        url_file = self.front.directory / WRITER_FILE
        try:
            url = url_file.read_text().strip()
        except OSError:
            raise ServerBusyError("the writer front is not listening yet; retry shortly") from None
        if self._client is None:
            tokens = configured_tokens(self.controller.config)
            headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}
            self._client = httpx.AsyncClient(base_url=url, headers=headers, timeout=600.0)
        content = orjson.dumps(body) if body is not None else None
        try:
            response = await self._client.request(
                method, path, content=content, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            client, self._client = self._client, None  # a restarted writer listens elsewhere
            await client.aclose()
            raise ServerBusyError(f"the writer front cannot be reached: {exc}") from None
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = {"error": response.text[:200], "code": "relay_failed"}
        if response.status_code >= 400 or not isinstance(answer, dict):
            raise _relayed(response.status_code, answer if isinstance(answer, dict) else {"error": answer})
        await self.sync()
        return answer

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# the parent: start, supervise and stop the fronts ---------------------------------------------------


def _front_main(args: argparse.Namespace, index: int, count: int, directory: str) -> None:
    """A front process: its environment, then ``ladle serve`` as usual."""
    os.setpgrp()  # the parent relays signals once; a terminal's Ctrl-C must not reach a front twice
    with contextlib.suppress(Exception):  # Linux: do not outlive a parent that was killed
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.environ.update(
        {FRONT_INDEX_VARIABLE: str(index), FRONT_COUNT_VARIABLE: str(count), FRONT_DIR_VARIABLE: directory}
    )
    from .commands import serve

    args.workers = 1
    sys.exit(serve.run(args))


class _Fronts:
    """The parent's view of its fronts."""

    def __init__(self, args: argparse.Namespace, count: int, directory: str) -> None:
        self.args = args
        self.count = count
        self.directory = directory
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.stopping = 0
        self.restarts = 0

    def start(self, index: int) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(
            target=_front_main,
            args=(self.args, index, self.count, self.directory),
            name=f"ladle-front-{index}",
        )
        process.start()
        return process

    def signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = signum
        self.signal_all(signum)

    def supervise(self) -> int:
        """Wait for the fronts; restart one that crashed; stop all when one stops deliberately."""
        self.processes = [self.start(i) for i in range(self.count)]
        code = 0
        while any(p.is_alive() for p in self.processes):
            time.sleep(0.2)
            if self.stopping:
                continue
            for index, process in enumerate(self.processes):
                exitcode = process.exitcode
                if exitcode is None:
                    continue
                if exitcode in _DELIBERATE_EXITS or self.restarts >= _MAX_RESTARTS:
                    code = exitcode if exitcode in _DELIBERATE_EXITS else 1
                    print(f"ladle: front {index} exited ({exitcode}); stopping the others", file=sys.stderr)
                    self.stopping = signal.SIGTERM
                    self.signal_all(signal.SIGTERM)
                    break
                self.restarts += 1
                print(f"ladle: front {index} died ({exitcode}); starting it again", file=sys.stderr)
                self.processes[index] = self.start(index)
        for process in self.processes:
            process.join(timeout=5)
        if not code:
            codes = [p.exitcode for p in self.processes if p.exitcode]
            code = 1 if any(c not in _DELIBERATE_EXITS for c in codes) else max(codes, default=0)
        return code


def _check_free(host: str, port: int) -> None:
    """``OSError`` if another server holds the port: ``SO_REUSEPORT`` alone would let the fronts
    share it silently with any server of the same user that set it too."""
    if port:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


def run_fronts(args: argparse.Namespace) -> int:
    """``ladle serve --workers N``: start N fronts on one port and supervise them."""
    from .commands.serve import with_flags
    from .server import load_config

    count = int(args.workers)
    if count < 1:
        print(f"error: command line: --workers: at least 1 front process (got {count})", file=sys.stderr)
        return 2
    try:
        flags = {"host": ("--host", args.host), "port": ("--port", args.port)}
        config = with_flags(load_config(args.path), flags)
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    host = config.server.host
    try:
        _check_free(host, config.server.port)
        reserved = reuse_port_socket(host, config.server.port)  # holds the port, never listens
    except OSError as exc:
        print(f"error: cannot bind {host}:{config.server.port}: {exc.strerror}", file=sys.stderr)
        return 2
    port = reserved.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="ladle-fronts-")
    args.port = port
    print(f"ladle: {count} front processes on http://{host}:{port}", file=sys.stderr)
    fronts = _Fronts(args, count, directory)
    previous: Mapping[int, Any] = {
        signum: signal.signal(signum, fronts.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return fronts.supervise()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reserved.close()
        shutil.rmtree(directory, ignore_errors=True)
