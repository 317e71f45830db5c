"""``ladle plugins``: every plugin, its version, hooks, registrations and dependency status."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from ..config import SERVER_CONFIG_FILE, load_server_config
from ..errors import LadleError
from ..plugin_host import PluginHost


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--config", type=Path, help=f"a {SERVER_CONFIG_FILE} whose [plugins] section applies")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_server_config(args.config)
        host = PluginHost(config.plugins.disabled)
        for module in config.plugins.modules:
            host.add_module(module)
        host.discover()
    except LadleError as exc:
        print(f"error: {exc.message}")
        return 1
    plugins = host.describe()
    if args.json:
        print(orjson.dumps(plugins, option=orjson.OPT_INDENT_2).decode())
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="ladle plugins")
    for column in ("plugin", "version", "status", "registers", "dependencies"):
        table.add_column(column)
    for plugin in plugins:
        registers = ", ".join(f"{r['family']}:{r['name']}" for r in plugin["registers"])
        missing = sorted({m for r in plugin["registers"] for m in r["missing"]})
        hints = sorted({r["install"] for r in plugin["registers"] if r["install"]})
        deps = "ok" if not missing else f"missing {', '.join(missing)} ({'; '.join(hints)})"
        status = plugin["status"] if not plugin["error"] else f"{plugin['status']}: {plugin['error']}"
        table.add_row(
            *(escape(cell) for cell in (plugin["name"], plugin["version"], status, registers, deps))
        )
    Console().print(table)
    return 0
