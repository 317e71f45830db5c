"""Offline virtual environments for tests that pip-install a plugin the way a user would."""

from __future__ import annotations

import os
import subprocess
import sysconfig
import venv
from pathlib import Path

from ladle.plugin_host import DISTRIBUTIONS_VARIABLE


def open_environment() -> dict[str, str]:
    """This process's environment with every installed plugin allowed (the suite allows only ladle's)."""
    env = dict(os.environ)
    env.pop(DISTRIBUTIONS_VARIABLE, None)
    return env


def make_environment(directory: Path) -> Path:
    """A fresh virtual environment that also sees this interpreter's packages (ladle and its dependencies).

    ``site.addsitedir`` (rather than a plain path line) also runs the ``.pth`` files there, which an
    editable install of ladle needs. pip comes from those packages too, so nothing is downloaded.
    """
    venv.create(directory, with_pip=False)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parents = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    Path(purelib, "_ladle_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in parents)
    )
    return python


def pip_install_offline(python: Path, project: Path) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", str(project)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
