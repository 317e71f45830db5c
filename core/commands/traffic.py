"""``ladle traffic``: set the traffic split of a model's versions.

The split is ``VERSION=PERCENT`` pairs (``ladle traffic fraud v1=90 v2=10``) or the control API's own
JSON body (``ladle traffic fraud '{"v1": 90, "v2": 10}'``, or ``-`` to read it from stdin), so what
``PUT /api/v1/deployments/{name}/traffic`` takes works here unchanged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from ..deployments.client import ControlError, add_connection_options, client_from, fail, report

__all__ = ["configure", "parse_split", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument(
        "split",
        nargs="+",
        metavar="VERSION=PERCENT",
        help="percent per version, summing to 100; or the API's JSON object ('-' reads it from stdin)",
    )
    add_connection_options(parser)


def parse_split(items: Sequence[str], stdin: str | None = None) -> dict[str, float]:
    """The split the arguments give; ``ValueError`` saying what is wrong otherwise."""
    if len(items) == 1 and (items[0] == "-" or items[0].lstrip()[:1] in ("{", "[")):
        text = (stdin if stdin is not None else sys.stdin.read()) if items[0] == "-" else items[0]
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the split is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ValueError(
                'the JSON split must be an object of version -> percent, e.g. {"v1": 90, "v2": 10}'
            )
        split = {}
        for version, percent in data.items():
            if isinstance(percent, bool) or not isinstance(percent, int | float):
                raise ValueError(f"the percent of version {version!r} must be a number, got {percent!r}")
            split[str(version)] = float(percent)
        return split
    split = {}
    for item in items:
        version, sep, percent = item.partition("=")
        try:
            if not sep or not version:
                raise ValueError
            split[version] = float(percent)
        except ValueError:
            raise ValueError(
                f"{item!r} is not VERSION=PERCENT (or pass the split as one JSON object)"
            ) from None
    return split


def run(args: argparse.Namespace) -> int:
    try:
        weights = parse_split(args.split)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with client_from(args) as client:
            state = client.traffic(args.model, weights)
    except ControlError as exc:
        return fail(exc)
    report(state, args.json)
    return 0
