"""``ladle traffic``: set the traffic split of a model's versions (``ladle traffic fraud v1=90 v2=10``)."""

from __future__ import annotations

import argparse
import sys

from ..deployments.client import ControlError, add_connection_options, client_from, fail, report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument(
        "split", nargs="+", metavar="VERSION=PERCENT", help="percent per version, summing to 100"
    )
    add_connection_options(parser)


def run(args: argparse.Namespace) -> int:
    weights: dict[str, float] = {}
    for item in args.split:
        version, sep, percent = item.partition("=")
        try:
            if not sep or not version:
                raise ValueError
            weights[version] = float(percent)
        except ValueError:
            print(f"error: {item!r} is not VERSION=PERCENT", file=sys.stderr)
            return 2
    try:
        with client_from(args) as client:
            state = client.traffic(args.model, weights)
    except ControlError as exc:
        return fail(exc)
    report(state, args.json)
    return 0
