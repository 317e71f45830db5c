"""The ``ladle`` command line (ladle.cli and ladle.commands.plugins)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest

import ladle
from ladle.cli import COMMANDS, main


def _script() -> str:
    """The installed ``ladle`` console script next to this interpreter."""
    candidate = Path(sysconfig.get_path("scripts")) / "ladle"
    if not candidate.exists():
        pytest.skip("the ladle console script is not installed next to this interpreter")
    return str(candidate)


def test_console_script_help() -> None:
    result = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ladle")
    for name, (_, help_text) in COMMANDS.items():
        assert name in result.stdout
        assert help_text in result.stdout


def test_console_script_unknown_command_exits_2() -> None:
    result = subprocess.run([_script(), "no-such-command"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'no-such-command'" in result.stderr
    assert result.stdout == ""


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: ladle")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ladle {ladle.__version__}"


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_unknown_option_of_a_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plugins", "--no-such-flag"])
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_command_help_comes_from_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plugins", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ladle plugins")
    assert "--json" in out


def test_plugins_json_lists_every_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    plugins = orjson.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in plugins}
    assert [p["name"] for p in plugins] == sorted(by_name)
    xgb = by_name["runtime-xgboost"]
    assert set(xgb) >= {"name", "version", "source", "status", "error", "hooks", "registers"}
    assert xgb["version"] == ladle.__version__
    assert xgb["status"] == "loaded"
    assert xgb["hooks"] == ["register_runtimes"]
    (runtime,) = xgb["registers"]
    assert runtime["family"] == "runtime"
    assert runtime["name"] == "xgboost"
    assert runtime["requires"] == ["xgboost"]
    assert runtime["extra"] == "xgboost"
    assert isinstance(runtime["missing"], list)


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A ladle.toml that disables the built-in xgboost plugin and adds a plugin module from sys.path."""
    module = f"ladletest_cli_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from ladle import hookimpl

            @hookimpl
            def register_runtimes(register):
                register("gizmo", "gizmo_lib:Gizmo", requires=["ladletest_gizmo_lib"], extra="gizmo")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "ladle.toml"
    config.write_text(f'[plugins]\ndisabled = ["runtime-xgboost"]\nmodules = ["{module}"]\n')
    return config, module


def test_plugins_json_applies_the_config(
    configured: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, module = configured
    assert main(["plugins", "--json", "--config", str(config)]) == 0
    by_name = {p["name"]: p for p in orjson.loads(capsys.readouterr().out)}
    assert by_name["runtime-xgboost"]["status"] == "disabled"
    assert by_name["runtime-xgboost"]["registers"] == []
    gizmo = by_name[module]
    assert gizmo["status"] == "loaded"
    assert gizmo["registers"][0]["missing"] == ["ladletest_gizmo_lib"]
    assert gizmo["registers"][0]["extra"] == "gizmo"


def test_plugins_table(configured: tuple[Path, str]) -> None:
    config, module = configured
    # a wide terminal keeps rich from folding cells, so each plugin stays on one line
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from ladle.cli import main; main(sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(config.parent), "plugins", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "250", "PATH": "", "TERM": "dumb"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("ladle plugins" in line for line in lines[:2])
    header = next(line for line in lines if "plugin" in line and "dependencies" in line)
    for column in ("version", "status", "registers"):
        assert column in header
    xgb = next(line for line in lines if "runtime-xgboost" in line)
    assert "disabled" in xgb
    gizmo = next(line for line in lines if module in line)
    assert "runtime:gizmo" in gizmo
    assert "missing ladletest_gizmo_lib" in gizmo
    assert "(pip install ladletest_gizmo_lib)" in gizmo  # no distribution known: the module to install


def test_plugins_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ladle.toml"
    config.write_text("[plugins]\ndisabld = []\n")
    assert main(["plugins", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "plugins.disabld" in out
    assert "unknown key" in out
