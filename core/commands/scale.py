"""``ladle scale MODEL VERSION N``: set a served version's replicas on a running server.

Under the fixed scaling policy N is the version's instance count; under an autoscaling policy (such
as ``queue-depth``) it is the floor the policy scales from. New instances load and warm before they
take traffic, removed ones drain first; the command returns once the change is done.
"""

from __future__ import annotations

import argparse
from urllib.parse import quote

from ..deployments.client import ControlError, add_connection_options, client_from, fail, print_json


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of replicas") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"replicas must be from 0 to 256, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument("version", help="a served version of the model")
    parser.add_argument("replicas", type=_replicas, help="instances (0-256; the floor under autoscaling)")
    add_connection_options(parser)


def run(args: argparse.Namespace) -> int:
    model, version = quote(args.model, safe=""), quote(args.version, safe="")
    path = f"/api/v1/deployments/{model}/versions/{version}/replicas"
    try:
        with client_from(args) as client:
            state = client.call("PUT", path, {"replicas": args.replicas})
    except ControlError as exc:
        return fail(exc)
    if args.json:
        print_json(state)
        return 0
    for version in state.get("versions", []):
        if version.get("version") == args.version:
            scaling = version.get("scaling") or {}
            print(
                f"{args.model} {args.version}: {version.get('ready_replicas')}/{version.get('replicas')} "
                f"instances ready (scaling policy {scaling.get('scaling', '?')})"
            )
    return 0
