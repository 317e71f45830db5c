"""``ladle serve PATH``: serve a model repository or a ``ladle.toml`` over HTTP.

Models load and warm up while the server already answers ``/v2/health/live``; ``/v2/health/ready``
turns true once they are ready. SIGTERM or SIGINT drains: the server stops accepting, finishes
in-flight requests, stops every instance and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from ..errors import LadleError
from ..server import Server, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, nargs="?", help="a ladle.toml, a directory holding one, or a model repository"
    )
    parser.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to bind (default from config: 8000; 0 picks a free one)"
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")


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


def build(args: argparse.Namespace) -> tuple[Server, str, int]:
    config = load_config(args.path)
    section = config.server
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if updates:
        config = config.model_copy(update={"server": section.model_copy(update=updates)})
    server = Server(config, progress=TerminalProgress())
    return server, config.server.host, config.server.port


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..http.app import create_app

    try:
        server, host, port = build(args)
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    app = create_app(server)
    print(f"ladle serving {server.config.repository_path} on http://{host}:{port}", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,  # ladle reads no X-Forwarded-* header; skip the middleware on every request
        server_header=False,
        timeout_graceful_shutdown=int(server.config.server.drain_timeout) or None,
    )
    userver = uvicorn.Server(config)
    # uvicorn re-raises the captured signal after shutting down, so the process would die of it;
    # a drained stop on SIGTERM/SIGINT is a clean exit, so handle the signals here instead.
    userver.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, userver.handle_exit)
    userver.run()
    return 0
