"""``ladle deploy``: load and warm a version on a running server, then give it traffic, or start a
guarded rollout (``--steps``) that steps it up while its guards hold and rolls it back if not."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from ..deployments.client import ControlError, add_connection_options, client_from, fail, report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name")
    parser.add_argument("version", help="version directory in the server's model repository")
    parser.add_argument("--traffic", type=float, help="percent of the traffic for the version (default 100)")
    parser.add_argument("--steps", help="guarded rollout: percent steps ending at 100, e.g. 5,25,50,100")
    parser.add_argument("--interval", type=float, help="guarded rollout: minimum seconds at each step")
    parser.add_argument(
        "--max-wait",
        type=float,
        help="guarded rollout: roll back when a step lacks samples after this many seconds",
    )
    parser.add_argument("--router", help="router for the model: canary, shadow, blue-green, ab, cascade")
    parser.add_argument("--options", help='deployment options as JSON: {"rollout": ..., "resilience": ...}')
    parser.add_argument(
        "--wait", action="store_true", help="wait for the rollout to finish; exit 1 if it was rolled back"
    )
    add_connection_options(parser)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.options:
        loaded = orjson.loads(args.options)
        if not isinstance(loaded, dict):
            raise ValueError("--options must be a JSON object")
        options = loaded
    if args.steps or args.interval is not None or args.max_wait is not None:
        rollout = options.setdefault("rollout", {})
        if args.steps:
            rollout["steps"] = [float(step) for step in args.steps.split(",")]
        if args.interval is not None:
            rollout["interval"] = args.interval
        if args.max_wait is not None:
            rollout["max_wait"] = args.max_wait
    if args.router:
        options["router"] = {**options.get("router", {}), "name": args.router}
    return options


def run(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with client_from(args) as client:
            state = client.deploy(args.model, args.version, args.traffic, options)
            while args.wait and (state.get("rollout") or {}).get("state") == "running":
                time.sleep(1.0)
                state = client.status(args.model)
    except ControlError as exc:
        return fail(exc)
    report(state, args.json)
    rolled_back = args.wait and (state.get("rollout") or {}).get("state") == "rolled_back"
    return 1 if rolled_back else 0
