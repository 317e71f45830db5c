"""``ladle serve PATH``: serve a model repository or a ``ladle.toml`` over HTTP.

Models load and warm up while the server already answers ``/v2/health/live``; ``/v2/health/ready``
turns true once they are ready. SIGTERM drains as a load balancer needs: readiness turns 503 at once,
the server goes on answering for ``[server] drain_grace`` seconds (each answer closing its
connection), then stops accepting, finishes in-flight requests, stops every instance and exits 0.
SIGINT, or a second signal, skips the grace.

Command-line settings go through the same validation as ``[server]`` in ``ladle.toml`` (an error
names the flag). A configuration error stops the start before anything loads (exit 2); a model that
fails to load stops the server once loading ends (exit 1), unless ``--keep-going`` (or ``[server]
keep_going = true``) serves what loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import ServerConfig, ServerSection, validation_error
from ..errors import ConfigError, LadleError, MissingDependencyError
from ..server import Server, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, nargs="?", help="a ladle.toml, a directory holding one, or a model repository"
    )
    parser.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to bind (default from config: 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="KServe V2 gRPC port (default from config: 8001 when the grpc extra is installed; 0: off)",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        default=None,
        help="serve the models that loaded when others fail (default: a failure stops the start)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="front processes sharing the port through SO_REUSEPORT (default 1; see ladle.fronts)",
    )


class TerminalProgress:
    """Prints model loading progress on stderr."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    def __call__(self, model: str, version: str, phase: str) -> None:
        style = {"ready": "green", "loading": "cyan", "warming": "yellow"}.get(
            phase, "red" if "fail" in phase else ""
        )
        self.console.print(
            f"  {model}/{version}: [{style}]{phase}[/]" if style else f"  {model}/{version}: {phase}"
        )


def with_flags(config: ServerConfig, values: Mapping[str, tuple[str, Any]]) -> ServerConfig:
    """``config`` with ``[server]`` keys set from the command line (``key -> (flag, value)``; a
    ``None`` value is not given), validated exactly as ``ladle.toml`` is: an error names the flag."""
    updates = {key: value for key, (_, value) in values.items() if value is not None}
    if not updates:
        return config
    try:
        section = ServerSection.model_validate({**config.server.model_dump(), **updates})
    except ValidationError as exc:
        flags = {key: flag for key, (flag, _) in values.items()}
        error = validation_error("command line", exc)
        problems = [{**p, "key": flags.get(p["key"], p["key"])} for p in error.details["problems"]]
        text = "; ".join(f"{p['key']}: {p['expected']} (got {p['got']})" for p in problems)
        raise ConfigError(f"command line: {text}", problems=problems) from None
    return config.model_copy(update={"server": section})


def _with_grpc_port(config: ServerConfig) -> ServerConfig:
    """``[server] grpc_port`` resolved: unset is 8001 with the ``grpc`` extra (else off, and off
    with a warning when 8001 is taken, so several servers can run on one host); a port asked for
    without the extra is an error naming it, and one that cannot be bound fails the start."""
    from ..fronts import current_front
    from ..grpc import EXTRA, default_grpc_port, grpc_available, port_is_free

    section = config.server
    if section.grpc_port is None:
        port = default_grpc_port()
        if port and current_front() is None and not port_is_free(section.host, port):
            print(
                f"warning: the default gRPC port {port} is taken; serving without gRPC "
                "(--grpc-port chooses another)",
                file=sys.stderr,
            )
            port = 0
        section = section.model_copy(update={"grpc_port": port})
        return config.model_copy(update={"server": section})
    if section.grpc_port and not grpc_available():
        raise MissingDependencyError(
            f"gRPC on port {section.grpc_port} needs the {EXTRA!r} extra: pip install 'ladle[{EXTRA}]' "
            "(or set --grpc-port 0)",
            extra=EXTRA,
        )
    return config


def build(args: argparse.Namespace) -> tuple[Server, str, int]:
    config = load_config(args.path)
    config = with_flags(
        config,
        {
            "host": ("--host", args.host),
            "port": ("--port", args.port),
            "keep_going": ("--keep-going", args.keep_going),
            "grpc_port": ("--grpc-port", args.grpc_port),
        },
    )
    config = _with_grpc_port(config)
    server = Server(config, progress=TerminalProgress())
    return server, config.server.host, config.server.port


def run(args: argparse.Namespace) -> int:
    from ..deployments.auth import startup_warnings
    from ..fronts import current_front, run_fronts
    from ..http.app import create_app
    from ..http.limits import Drain, http_server

    front = current_front()
    if front is None and args.workers != 1:
        return run_fronts(args)  # the parent of N fronts, each of which comes back here
    try:
        server, host, port = build(args)
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if front is not None:
        front.attach(server)
    drain = Drain()  # SIGTERM: readiness off, answers for [server] drain_grace s, then stop accepting
    app = create_app(server, drain)
    print(f"ladle serving {server.config.repository_path} on http://{host}:{port}", file=sys.stderr)
    if server.config.server.grpc_port:
        print(f"  KServe V2 gRPC on {host}:{server.config.server.grpc_port}", file=sys.stderr)
    for warning in startup_warnings(server.config):
        print(f"warning: {warning}", file=sys.stderr)
    userver = http_server(app, server.config.server, drain, host=host, port=port, log_level=args.log_level)
    # uvicorn re-raises the captured signal after shutting down, so the process would die of it;
    # a drained stop on SIGTERM/SIGINT is a clean exit, so handle the signals here instead.
    userver.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, userver.handle_exit)
    failed: list[dict[str, str]] = []

    def stop_start(failures: dict[str, str]) -> None:
        failed.append(failures)
        lines = "".join(f"\n  {name}: {message}" for name, message in failures.items())
        print(
            f"error: {len(failures)} failed to load; the server stops (--keep-going, or [server] "
            f"keep_going = true, serves what loaded):{lines}",
            file=sys.stderr,
        )
        userver.should_exit = True

    server.manager.start_failed.append(stop_start)
    userver.run(sockets=front.sockets(host, port) if front is not None else None)
    return 1 if failed else 0
