"""``ladle top [URL]``: a live terminal view of a server's models and versions.

Refreshes from ``GET URL/api/v1/stats`` every ``--interval`` seconds: each version's share of the
traffic split, requests per second, p50/p99 latency, errors, queue depth, batches in flight,
ready/desired instances, restarts in the window, the predicted wait of a request arriving now,
mean batch size, drift and the latency objectives (``latency_slo``) missed now. The URL defaults
to ``$LADLE_URL`` as for the other commands; ``q`` (or Ctrl-C) quits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

from ..deployments.client import DEFAULT_URL

__all__ = ["configure", "render", "run"]

QUIT_KEYS = frozenset("qQ")


def configure(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("LADLE_URL", DEFAULT_URL)
    parser.add_argument(
        "url",
        nargs="?",
        default=None,
        help=f"base URL of a ladle server (default: $LADLE_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--url", dest="url_option", default=default, help="the same as URL")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds the figures cover (default 10)")
    parser.add_argument("--token", help="bearer token (default: $LADLE_API_TOKEN)")
    parser.add_argument("--once", action="store_true", help="print the table once and exit")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _instances(entry: dict[str, Any]) -> str:
    """``ready/desired`` instances (``ready`` alone when the server does not scale the version)."""
    ready = _number(entry.get("instances"), 0)
    desired = entry.get("desired_instances")
    return ready if desired is None else f"{ready}/{desired:.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _resources(data: dict[str, Any]) -> str:
    resources = data.get("resources") or {}
    parts = []
    for process in resources.get("processes", []):
        cpu = process.get("cpu_utilization")
        cpu_text = "-" if cpu is None else f"{cpu * 100:.0f}%"
        parts.append(
            f"{process['role']} {process['pid']}: CPU {cpu_text}, RSS {_bytes(process['memory_rss'])}"
        )
    for gpu in resources.get("gpus", []):
        parts.append(
            f"gpu{gpu['index']}: {_bytes(gpu['memory_used'])} used, {_bytes(gpu['memory_free'])} free"
        )
    return "  |  ".join(parts)


def _slo(entry: dict[str, Any]) -> Any:
    """``ok``, the objectives missed now (red), or ``-`` without objectives or data."""
    from rich.text import Text

    report: dict[str, dict[str, Any]] = entry.get("slo") or {}
    missed = [name for name, objective in report.items() if objective.get("met") is False]
    if missed:
        return Text("missed " + ",".join(missed), style="bold red")
    if any(objective.get("met") for objective in report.values()):
        return Text("ok", style="green")
    return "-"


def render(
    data: dict[str, Any] | None, url: str, error: str = "", traffic: dict[str, dict[str, float]] | None = None
) -> Any:
    """The table for one refresh (a rich renderable); ``traffic`` is each model's split (percent
    per version), when the server lists it."""
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S")
    window = data.get("window", "?") if data else "?"
    table = Table(title=f"ladle top  {url}  (last {window} s, {stamp})", expand=False)
    columns: list[tuple[str, JustifyMethod]] = [("model", "left"), ("version", "left")]
    for name in (
        "traffic",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "err %",
        "queue",
        "in flight",
        "ready/desired",
        "restarts",
        "wait ms",
        "batch rows",
        "drift",
        "slo",
    ):
        columns.append((name, "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for entry in (data or {}).get("versions", []):
        drift = entry.get("drift")
        drift_text = Text(_number(drift, 3), style="red" if drift is not None and drift > 0.25 else "")
        errors = entry.get("errors", 0)
        split = (traffic or {}).get(entry["model"])
        share = "-" if split is None else f"{split.get(entry['version'], 0.0):g}%"
        table.add_row(
            entry["model"],
            entry["version"],
            share,
            _number(entry.get("request_rate")),
            _ms(entry.get("latency_p50")),
            _ms(entry.get("latency_p99")),
            Text(str(errors), style="red" if errors else ""),
            _number(100.0 * (entry.get("error_ratio") or 0.0)),
            _number(entry.get("queue_depth"), 0),
            _number(entry.get("in_flight"), 0),
            _instances(entry),
            Text(str(entry.get("restarts") or 0), style="red" if entry.get("restarts") else ""),
            _ms(entry.get("predicted_wait")),
            _number(entry.get("batch_rows_mean")),
            drift_text,
            _slo(entry),
        )
    if error:
        table.caption = Text(error, style="bold red")
    elif data is not None:
        table.caption = _resources(data)
    return table


def _fetch(client: httpx.Client, window: float) -> tuple[dict[str, Any] | None, str]:
    try:
        response = client.get("/api/v1/stats", params={"window": window})
    except httpx.HTTPError as exc:
        return None, f"cannot reach {client.base_url}: {exc}"
    if response.status_code == 401:
        return None, "unauthorized: pass --token or set LADLE_API_TOKEN"
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        return None, f"HTTP {response.status_code}: {message}"
    data: dict[str, Any] = response.json()
    return data, ""


def _traffic(client: httpx.Client) -> dict[str, dict[str, float]] | None:
    """Each served model's split from ``GET /api/v1/models`` (``None`` where the server has none)."""
    try:
        response = client.get("/api/v1/models")
        models = response.json().get("models", []) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(models, list):
        return None
    return {m["name"]: dict(m.get("traffic") or {}) for m in models if isinstance(m, dict) and "name" in m}


def _refresh(client: httpx.Client, url: str, window: float) -> Any:
    data, error = _fetch(client, window)
    return render(data, url, error, _traffic(client) if data is not None else None), error


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Yields ``wait(seconds) -> key or ""``: keys arrive unbuffered while the terminal is in cbreak
    mode (restored on exit); without a terminal it just sleeps."""
    stdin = sys.stdin
    try:
        import termios
        import tty

        fd = stdin.fileno()
        saved = termios.tcgetattr(fd) if stdin.isatty() else None
    except (ImportError, OSError, ValueError, AttributeError):
        saved = None

    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return ""

    if saved is None:
        yield sleep
        return

    def wait(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace") if ready else ""

    tty.setcbreak(fd)
    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    target = args.url or args.url_option
    url = target if "://" in target else f"http://{target}"
    token = args.token or os.environ.get("LADLE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    console = Console()
    with httpx.Client(base_url=url, headers=headers, timeout=max(2.0, args.interval * 2)) as client:
        if args.once:
            table, error = _refresh(client, url, args.window)
            console.print(table)
            return 1 if error else 0
        try:
            with (
                _keys() as wait,
                Live(_refresh(client, url, args.window)[0], console=console, auto_refresh=False) as live,
            ):
                while True:
                    deadline = time.monotonic() + args.interval
                    while (left := deadline - time.monotonic()) > 0:
                        if wait(left) in QUIT_KEYS:
                            return 0
                    live.update(_refresh(client, url, args.window)[0], refresh=True)
        except KeyboardInterrupt:
            return 0
