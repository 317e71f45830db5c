"""``ladle status``: the deployments of a running server; with a model, its versions and history."""

from __future__ import annotations

import argparse
from typing import Any

from ..deployments.client import ControlError, add_connection_options, client_from, fail, print_json, summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="show one model with its versions and history")
    add_connection_options(parser)


def split_text(split: Any) -> str:
    """``v1 90%, v2 10%`` for a split in an event's details ("" when the event carries none)."""
    if not isinstance(split, dict):
        return ""
    return ", ".join(f"{version} {weight:g}%" for version, weight in split.items()) or "no traffic"


def _print_model(state: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(summary(state), markup=False, highlight=False)
    versions = Table(title="versions")
    for column in ("version", "status", "traffic", "ready", "instances", "restarts"):
        versions.add_column(column)
    for version in state.get("versions", []):
        scaling = version.get("scaling") or {}
        instances = f"{version.get('ready_replicas', 0)}/{version.get('replicas', 0)}"
        if scaling.get("held"):  # a crash loop backs off, or the placement refused an instance
            instances += f" ({scaling['held']})"
        versions.add_row(
            version["version"],
            version["status"],
            f"{version['traffic']:g}%",
            "yes" if version["ready"] else "no",
            instances,
            str(scaling.get("restarts", 0)),
        )
    console.print(versions)
    events = Table(title="history")
    for column in ("at", "event", "version", "traffic", "message"):
        events.add_column(column)
    for event in state.get("history", {}).get("events", [])[:20]:
        split = split_text((event.get("details") or {}).get("traffic"))
        events.add_row(event["at"], event["kind"], event.get("version") or "", split, event["message"])
    console.print(events)


def run(args: argparse.Namespace) -> int:
    try:
        with client_from(args) as client:
            state = client.status(args.model)
    except ControlError as exc:
        return fail(exc)
    if args.json:
        print_json(state)
    elif args.model:
        _print_model(state)
    else:
        print(f"{state.get('mode')} mode")
        for model in state.get("models", []):
            print(summary(model))
    return 0
