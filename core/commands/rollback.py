"""``ladle rollback``: send all of a model's traffic back to its previous version (or ``--to`` one)."""

from __future__ import annotations

import argparse

from ..deployments.client import ControlError, add_connection_options, client_from, fail, report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument(
        "--to", metavar="VERSION", help="the version to return to (default: the previous one)"
    )
    add_connection_options(parser)


def run(args: argparse.Namespace) -> int:
    try:
        with client_from(args) as client:
            state = client.rollback(args.model, args.to)
    except ControlError as exc:
        return fail(exc)
    report(state, args.json)
    return 0
