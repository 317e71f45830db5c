"""Python runtime plugin: serves a user's handler class (installed code, or ``handler.py`` in the
version directory when the model sets ``trust_code``)."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

HANDLER_FILE = "handler.py"


def detect(directory: Path) -> bool:
    """A ``handler.py`` in the version directory (it is only run if the model sets ``trust_code``)."""
    return (directory / HANDLER_FILE).is_file()


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "python",
        "ladle.plugins.runtimes.python.runtime:PythonRuntime",
        detect=detect,
        description="a handler class with load/predict over a batch: options.handler = 'module:Class' "
        "or handler.py in the version directory (trust_code only)",
    )
