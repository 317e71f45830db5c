"""``ladle status``: the deployments of a running server; with a model, its versions and history."""

from __future__ import annotations

import argparse
from typing import Any

from ..deployments.client import ControlError, add_connection_options, client_from, fail, print_json, summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="show one model with its versions and history")
    add_connection_options(parser)


def _print_model(state: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(summary(state), markup=False, highlight=False)
    versions = Table(title="versions")
    for column in ("version", "status", "traffic", "ready"):
        versions.add_column(column)
    for version in state.get("versions", []):
        versions.add_row(
            version["version"],
            version["status"],
            f"{version['traffic']:g}%",
            "yes" if version["ready"] else "no",
        )
    console.print(versions)
    events = Table(title="history")
    for column in ("at", "event", "version", "message"):
        events.add_column(column)
    for event in state.get("history", {}).get("events", [])[:20]:
        events.add_row(event["at"], event["kind"], event.get("version") or "", event["message"])
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
