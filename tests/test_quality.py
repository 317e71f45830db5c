"""The code itself: ruff clean everywhere, mypy strict on the core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_core(tmp_path: Path) -> None:
    # The editable install maps ``ladle`` onto ``core/`` with an import hook mypy cannot follow,
    # so mypy reads the core through a symlink named like the package.
    os.symlink(ROOT / "core", tmp_path / "ladle")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--strict", "ladle"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
