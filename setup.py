"""Computes the package list so a new sub-package can never be left out of the wheel."""

from pathlib import Path

from setuptools import setup

ROOTS = {"core": "ladle", "plugins": "ladle.plugins", "templates": "ladle.templates"}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found: list[str] = []
    for folder, package in ROOTS.items():
        base = here / folder
        for init in sorted(base.rglob("__init__.py")):
            relative = init.parent.relative_to(base).parts
            found.append(".".join((package, *relative)))
    return found


setup(packages=_packages())
