"""``ladle top URL``: a live terminal view of a server's models and versions.

Refreshes from ``GET URL/api/v1/stats`` every ``--interval`` seconds: requests per second,
p50/p99 latency, errors, queue depth, batches in flight, instances, mean batch size and drift.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import httpx

__all__ = ["configure", "render", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="base URL of a ladle server, e.g. http://127.0.0.1:8000")
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


def render(data: dict[str, Any] | None, url: str, error: str = "") -> Any:
    """The table for one refresh (a rich renderable)."""
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S")
    window = data.get("window", "?") if data else "?"
    table = Table(title=f"ladle top  {url}  (last {window} s, {stamp})", expand=False)
    columns: list[tuple[str, JustifyMethod]] = [("model", "left"), ("version", "left")]
    for name in (
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "err %",
        "queue",
        "in flight",
        "instances",
        "batch rows",
        "drift",
    ):
        columns.append((name, "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for entry in (data or {}).get("versions", []):
        drift = entry.get("drift")
        drift_text = Text(_number(drift, 3), style="red" if drift is not None and drift > 0.25 else "")
        errors = entry.get("errors", 0)
        table.add_row(
            entry["model"],
            entry["version"],
            _number(entry.get("request_rate")),
            _ms(entry.get("latency_p50")),
            _ms(entry.get("latency_p99")),
            Text(str(errors), style="red" if errors else ""),
            _number(100.0 * (entry.get("error_ratio") or 0.0)),
            _number(entry.get("queue_depth"), 0),
            _number(entry.get("in_flight"), 0),
            _number(entry.get("instances"), 0),
            _number(entry.get("batch_rows_mean")),
            drift_text,
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


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    url = args.url if "://" in args.url else f"http://{args.url}"
    token = args.token or os.environ.get("LADLE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    console = Console()
    with httpx.Client(base_url=url, headers=headers, timeout=max(2.0, args.interval * 2)) as client:
        if args.once:
            data, error = _fetch(client, args.window)
            console.print(render(data, url, error))
            return 1 if error else 0
        try:
            data, error = _fetch(client, args.window)
            with Live(render(data, url, error), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(args.interval)
                    data, error = _fetch(client, args.window)
                    live.update(render(data, url, error), refresh=True)
        except KeyboardInterrupt:
            return 0
