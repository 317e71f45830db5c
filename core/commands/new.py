"""``ladle new``: scaffold a model service or a third-party runtime plugin from a shipped template.

    ladle new service NAME [--runtime xgboost] [--dest DIR]
    ladle new plugin NAME [--distribution DIST] [--package PACKAGE] [--dest DIR]

Templates live in ``ladle.templates`` (one copier template per folder) and are rendered with copier,
so they can also be used with ``copier copy`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["TEMPLATES", "configure", "render", "run", "service_runtimes", "template_path"]

#: template folder -> one-line description
TEMPLATES: dict[str, str] = {
    "service": "a model service: ladle.toml, a model repository, a build script, a README and a test",
    "plugin": "a third-party runtime plugin package with its entry point, runtime and tests",
}


def configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="template", metavar="TEMPLATE", required=True)
    service = kinds.add_parser("service", help=TEMPLATES["service"], description=TEMPLATES["service"])
    service.add_argument("name", help="model name (letters, digits, '.', '_', '-'); also the folder name")
    service.add_argument(
        "--runtime",
        default="xgboost",
        help=f"runtime serving the model: {', '.join(service_runtimes())} (default: xgboost)",
    )
    plugin = kinds.add_parser("plugin", help=TEMPLATES["plugin"], description=TEMPLATES["plugin"])
    plugin.add_argument("name", help="runtime name, as written in model.toml (lower case, '-' and '_')")
    plugin.add_argument("--distribution", help="distribution name on PyPI (default: ladle-NAME)")
    plugin.add_argument("--package", help="Python package name (default: ladle_NAME)")
    for sub in (service, plugin):
        sub.add_argument("--dest", type=Path, help="folder to create (default: ./NAME, or ./DISTRIBUTION)")
        sub.add_argument("--force", action="store_true", help="render into a folder that is not empty")


@contextlib.contextmanager
def template_path(name: str) -> Iterator[Path]:
    """The template folder as a real directory (copied out when ladle is imported from an archive)."""
    root = resources.files("ladle.templates") / name
    if isinstance(root, Path):
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="ladle-template-") as scratch:
        target = Path(scratch) / name
        _copy_tree(root, target)
        yield target


def service_runtimes() -> list[str]:
    """The runtimes the service template offers: its ``runtimes/`` folders that hold a build script."""
    runtimes = resources.files("ladle.templates") / "service" / "runtimes"
    return sorted(
        entry.name
        for entry in runtimes.iterdir()
        if entry.is_dir() and (entry / "build_model.py.jinja").is_file()
    )


def _copy_tree(source: Traversable, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_tree(entry, target / entry.name)
        else:
            (target / entry.name).write_bytes(entry.read_bytes())


def render(template: str, destination: Path, answers: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Render ``template`` into ``destination`` with ``answers``; raises ``ValueError`` on invalid answers."""
    import copier

    with template_path(template) as source:
        copier.run_copy(
            str(source),
            destination,
            data={"ladle_version": __version__, **answers},
            defaults=True,
            overwrite=overwrite,
            quiet=True,
            unsafe=False,
        )
    return destination


def _answers(args: argparse.Namespace) -> dict[str, Any]:
    answers: dict[str, Any] = {"name": args.name}
    if args.template == "service":
        from ..kubernetes.options import derive_name  # the image name `ladle k8s render` defaults to

        answers["runtime"] = args.runtime
        answers["image"] = derive_name(args.name)
    else:
        for key in ("distribution", "package"):
            if getattr(args, key):
                answers[key] = getattr(args, key)
    return answers


def _default_folder(args: argparse.Namespace) -> str:
    if args.template == "plugin":
        return str(args.distribution or f"ladle-{args.name}")
    return str(args.name)


def run(args: argparse.Namespace) -> int:
    try:
        import copier  # noqa: F401
    except ImportError:
        print("error: ladle new needs copier: pip install 'ladle[new]'", file=sys.stderr)
        return 1
    if args.template == "service" and args.runtime not in service_runtimes():
        print(
            f"error: no runtime {args.runtime!r} in the service template; "
            f"choose one of: {', '.join(service_runtimes())}",
            file=sys.stderr,
        )
        return 1
    destination: Path = args.dest or Path.cwd() / _default_folder(args)
    if destination.exists() and any(destination.iterdir()) and not args.force:
        print(f"error: {destination} is not empty (use --force to render into it)", file=sys.stderr)
        return 1
    created = not destination.exists()
    try:
        render(args.template, destination, answers := _answers(args), overwrite=args.force)
    except ValueError as exc:
        if created:
            shutil.rmtree(destination, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"created {args.template} {args.name!r} in {destination}")
    steps = (
        [
            "pip install -r requirements.txt",
            "python build_model.py",
            "pytest",
            "ladle serve .",
            f"docker build -t {answers['image']} .",
        ]
        if args.template == "service"
        else ["pip install -e '.[test]'", "pytest", "ladle plugins"]
    )
    print("next:\n" + "\n".join(f"  {step}" for step in [f"cd {destination}", *steps]))
    return 0
