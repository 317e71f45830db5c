"""``ladle plan PATH``: which model instance would run on which GPU, read from config alone.

A dry run: the configuration is resolved exactly as ``ladle serve`` resolves it, nothing is loaded
and no GPU is needed. Every instance of a model on a ``cuda`` device is packed by its declared
``resources.gpu_memory`` (``ladle.packing``); models on other devices are listed as CPU. Exit status
0 when everything is placed, 1 when something cannot be, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from ..errors import LadleError
from ..gpus import Gpu, format_bytes, machine_gpus, parse_gpus
from ..packing import DEFAULT_HEADROOM, demands_from_plans, pack
from ..plugin_host import PluginHost
from ..repository import ModelRepository
from ..server import load_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, help="a ladle.toml, a directory holding one, or a model repository"
    )
    parser.add_argument(
        "--gpus", help="the GPUs to plan for, e.g. 4x80GiB or 80GiB,40GiB (default: this machine's, via NVML)"
    )
    parser.add_argument(
        "--headroom", type=float, help=f"memory kept beyond each figure (default {DEFAULT_HEADROOM})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def build(path: Path, gpus: str | None, headroom: float | None) -> dict[str, Any]:
    """The plan of the repository or config at ``path`` as JSON data (raises ``LadleError``)."""
    config = load_config(path)
    host = PluginHost(config.plugins.disabled)
    for module in config.plugins.modules:
        host.add_module(module)
    host.discover()
    repository = ModelRepository(config.repository_path)
    plans = [repository.plan(name, config, host) for name in repository.models()]
    demands, elsewhere = demands_from_plans(plans)
    machine: tuple[Gpu, ...] = parse_gpus(gpus) if gpus else (machine_gpus() or ())
    plan = pack(demands, machine, DEFAULT_HEADROOM if headroom is None else headroom)
    data = plan.to_dict()
    data["cpu"] = [{"model": model, "version": version} for model, version in elsewhere]
    data["gpus_source"] = "--gpus" if gpus else ("nvml" if machine else "none")
    return data


def run(args: argparse.Namespace) -> int:
    try:
        data = build(args.path, args.gpus, args.headroom)
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(data)
    return 1 if data["unplaced"] else 0


def _print(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    unused = [f"{g['device']} ({format_bytes(g['memory_bytes'])})" for g in data["gpus"] if not g["models"]]
    for gpu in data["gpus"]:
        if not gpu["models"]:
            continue
        title = (
            f"{gpu['device']} {gpu['name']}".strip()
            + f": {format_bytes(gpu['memory_bytes'])}, {format_bytes(gpu['free_bytes'])} free, "
            + f"{gpu['thread_percentage']}% of SMs claimed"
        )
        table = Table(title=escape(title), title_justify="left")
        for column in (
            "model",
            "version",
            "instance",
            "memory",
            "limit",
            "SM %",
            "source",
            "placement",
        ):
            table.add_column(column)
        for entry in gpu["models"]:
            table.add_row(
                escape(entry["model"]),
                escape(entry["version"]),
                str(entry["instance"]),
                format_bytes(entry["memory_bytes"]),
                format_bytes(entry["limit_bytes"]),
                str(entry["thread_percentage"]),
                entry["source"],
                escape(entry["placement"]),
            )
        console.print(table)
    if data["unplaced"]:
        table = Table(title="cannot be placed", title_justify="left")
        for column in ("model", "version", "instance", "reason"):
            table.add_column(column)
        for entry in data["unplaced"]:
            table.add_row(
                escape(entry["model"]),
                escape(entry["version"]),
                str(entry["instance"]),
                escape(entry["reason"]),
            )
        console.print(table)
    if unused:
        console.print(f"unused: {', '.join(unused)}", highlight=False)
    if data["cpu"]:
        names = ", ".join(f"{e['model']}/{e['version']}" for e in data["cpu"])
        console.print(f"on CPU (not packed): {escape(names)}", highlight=False)
    used, bound = data["gpus_used"], data["lower_bound"]
    console.print(
        f"{used} of {len(data['gpus'])} GPUs used (lower bound {bound}); headroom {data['headroom']:.0%}; "
        "--json shows each worker's environment",
        highlight=False,
    )
