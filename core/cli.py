"""The ``ladle`` command line. Each command lives in ``ladle.commands.<name>`` and is imported only
when it runs, so ``ladle --help`` stays fast and imports no ML framework."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["COMMANDS", "main"]

#: command name -> (module under ladle.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve a model repository or a ladle.toml over HTTP"),
    "demo": ("demo", "build small demo models and serve them"),
    "plugins": ("plugins", "list plugins, what they register and their dependency status"),
    "top": ("top", "live terminal view of a running server"),
    "deploy": ("deploy", "deploy a model version through the control API"),
    "traffic": ("traffic", "set the traffic split of a model's versions"),
    "rollback": ("rollback", "roll a model back to its previous stable version"),
    "status": ("status", "show deployments and their history"),
    "scale": ("scale", "set a served version's replicas (its floor under autoscaling)"),
    "plan": ("plan", "dry run: which model instance goes on which GPU"),
    "new": ("new", "scaffold a model service or a plugin package"),
    "k8s": ("k8s", "dry run: Kubernetes manifests for a config"),
    "batch": ("batch", "score a file of records offline, without a server (resumable)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladle", description="ladle: plugin-based model serving")
    parser.add_argument("--version", action="version", version=f"ladle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ladle`` script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        parser = _parser()
        if not args:
            parser.print_help()
            return 0
        parser.parse_args(args)  # prints --help / --version, or an error naming the bad command
        return 2
    module = importlib.import_module(f"ladle.commands.{COMMANDS[args[0]][0]}")
    command = argparse.ArgumentParser(prog=f"ladle {args[0]}", description=COMMANDS[args[0]][1])
    module.configure(command)
    options = command.parse_args(args[1:])
    result: int = module.run(options)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
