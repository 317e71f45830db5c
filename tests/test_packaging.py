"""Packaging guarantees: the wheel maps core/, plugins/ and templates/ into ``ladle`` and nothing else,
and the command line stays free of ML frameworks."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ladle

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> package path inside the wheel
MAPPING = {"core": "ladle", "plugins": "ladle/plugins", "templates": "ladle/templates"}
#: modules the CLI must never import (frameworks are the plugins' business, loaded on use)
FRAMEWORKS = (
    "torch",
    "jax",
    "jaxlib",
    "xgboost",
    "onnxruntime",
    "onnx",
    "tensorflow",
    "transformers",
    "sklearn",
    "ray",
    "cupy",
)
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache")


def _tree_files(folder: str) -> list[Path]:
    base = ROOT / folder
    return sorted(
        p.relative_to(base)
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the tree, so the build never writes into the working tree."""
    source = tmp_path_factory.mktemp("source")
    for folder in MAPPING:
        shutil.copytree(ROOT / folder, source / folder, ignore=_IGNORED)
    for path in ROOT.iterdir():
        if path.is_file() and path.suffix in ("", ".py", ".toml", ".md", ".txt", ".in", ".cfg"):
            shutil.copy2(path, source / path.name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=240,
    )  # fmt: skip
    (built,) = out.glob("ladle-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def _dist_info(names: set[str], file: str) -> str:
    (found,) = [n for n in names if n.startswith("ladle-") and n.endswith(f".dist-info/{file}")]
    return found


def test_wheel_holds_every_module_of_the_tree(names: set[str]) -> None:
    missing = []
    for folder, package in MAPPING.items():
        for relative in _tree_files(folder):
            if relative.suffix == ".py" or relative.name == "py.typed":
                expected = f"{package}/{relative.as_posix()}"
                if expected not in names:
                    missing.append(expected)
    assert not missing, "the wheel leaves these out"
    assert "ladle/py.typed" in names
    assert "ladle/plugins/runtimes/xgboost/runtime.py" in names


def test_wheel_holds_every_template_file(names: set[str]) -> None:
    files = _tree_files("templates")
    assert any(p.suffix != ".py" for p in files), "no template files found in templates/"
    missing = [
        f"ladle/templates/{p.as_posix()}" for p in files if f"ladle/templates/{p.as_posix()}" not in names
    ]
    assert not missing


def test_wheel_installs_nothing_outside_ladle(names: set[str]) -> None:
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"ladle", _dist_info(names, "RECORD").split("/")[0]}
    assert not any(name.startswith(("core/", "plugins/", "templates/", "tests/")) for name in names)


def test_entry_points_point_into_the_wheel(wheel: Path, names: set[str]) -> None:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(_dist_info(names, "entry_points.txt")).decode()
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser["console_scripts"]["ladle"] == "ladle.cli:main"
    assert parser["pytest11"]["ladle"] == "ladle.testing.pytest_plugin"
    assert parser["ladle"]["runtime-xgboost"] == "ladle.plugins.runtimes.xgboost"
    absent = []
    for group in ("console_scripts", "pytest11", "ladle"):
        for name, value in parser[group].items():
            module = value.partition(":")[0].replace(".", "/")
            if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
                absent.append(f"[{group}] {name} = {value}")
    assert not absent, "entry points naming modules the wheel does not hold"


def test_frameworks_are_optional_dependencies(wheel: Path, names: set[str]) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(_dist_info(names, "METADATA")).decode()
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert required, "the wheel declares no dependencies"
    heavy = [r for r in required if r.split("[")[0].split(">")[0].split("=")[0].strip() in FRAMEWORKS]
    assert not heavy


# The installed package, imported from the unpacked wheel rather than the working tree ----------

_PROBE = """
import importlib.resources, io, json, sys, contextlib
import ladle
from ladle.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
        code = 0
    except SystemExit as exc:
        code = exc.code
templates = sorted(
    p.name for p in importlib.resources.files("ladle.templates").iterdir() if p.name != "__pycache__"
)
heavy = sorted(m for m in {frameworks!r} if m in sys.modules)
print(json.dumps({{"file": ladle.__file__, "code": code, "out": out.getvalue(), "heavy": heavy,
                   "templates": templates}}))
"""


def _probe(unpacked: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(unpacked), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(frameworks=FRAMEWORKS), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return data


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"]])
def test_cli_from_the_wheel_imports_no_framework(unpacked: Path, args: list[str]) -> None:
    data = _probe(unpacked, *args)
    assert Path(str(data["file"])).is_relative_to(unpacked), "ladle was not imported from the wheel"
    assert data["code"] == 0
    assert data["heavy"] == [], f"`ladle {' '.join(args)}` imported ML frameworks"
    assert "runtime-xgboost" in str(data["out"]) or args == ["--help"]


def test_templates_are_resources_of_the_installed_package(unpacked: Path) -> None:
    data = _probe(unpacked, "--version")
    on_disk = sorted(p.name for p in (ROOT / "templates").iterdir() if p.name != "__pycache__")
    assert data["templates"] == on_disk
    assert data["out"] == f"ladle {ladle.__version__}\n"
