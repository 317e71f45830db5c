"""Project templates (ladle.templates) and ``ladle new``: render them, check them, run what they generate."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from offline_venv import make_environment, open_environment, pip_install_offline

import ladle
from ladle.cli import main
from ladle.commands.new import TEMPLATES, render, service_runtimes, template_path
from ladle.config import load_server_config, merge_model_config
from ladle.plugin_host import PluginHost
from ladle.repository import ModelRepository

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
needs_copier = pytest.mark.skipif(
    importlib.util.find_spec("copier") is None, reason="copier is not installed"
)


def _files(directory: Path) -> set[str]:
    return {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts
    }


def _assert_fully_rendered(directory: Path) -> None:
    for path in directory.rglob("*"):
        assert "{{" not in path.name and "{%" not in path.name, path
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, f"unrendered template text in {path}"
            assert not path.name.endswith(".jinja"), path
            if path.suffix == ".py":
                ast.parse(text, str(path))


def _ruff(directory: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        return
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "."], cwd=directory, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_template_is_shipped_as_a_resource() -> None:
    import ladle.templates

    for name in TEMPLATES:
        with template_path(name) as folder:
            assert folder == Path(ladle.templates.__file__).parent / name
            assert (folder / "copier.yml").is_file()
            assert (folder / "template").is_dir()


def test_new_without_copier_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "copier", None)  # makes `import copier` fail
    assert main(["new", "service", "m", "--dest", str(tmp_path / "m")]) == 1
    assert "pip install 'ladle[new]'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_each_service_runtime_choice_has_its_parts_and_a_plugin() -> None:
    choices = service_runtimes()  # the runtimes/ folders: no list to keep in step
    with template_path("service") as folder:
        folders = sorted(p.name for p in (folder / "runtimes").iterdir() if p.is_dir())
        assert sorted(choices) == folders
        for runtime in choices:
            for part in ("build_model.py.jinja", "readme.md.jinja", "requirements.txt.jinja"):
                assert (folder / "runtimes" / runtime / part).is_file(), f"{runtime}/{part}"
    registered = {r.name for r in PluginHost().discover().registrations("runtime")}
    assert set(choices) <= registered


# Service -----------------------------------------------------------------------------------


#: service runtime -> modules its build script and service need
SERVICE_RUNTIMES = {
    "xgboost": ("xgboost", "sklearn"),
    "onnx": ("onnx", "onnxruntime", "sklearn"),
    "python": ("sklearn",),
    "torch": ("torch", "sklearn"),
    "jax": ("jax", "flatbuffers", "sklearn"),
    "causal-lm": ("torch", "tokenizers", "safetensors"),
    "sklearn": ("sklearn", "skops"),
}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One rendered service per runtime, made with ``ladle new service``."""
    pytest.importorskip("copier")
    root = tmp_path_factory.mktemp("services")
    rendered = {}
    for runtime in SERVICE_RUNTIMES:
        destination = root / runtime / "churn-model"
        assert main(["new", "service", "churn-model", "--runtime", runtime, "--dest", str(destination)]) == 0
        rendered[runtime] = destination
    return rendered


@pytest.fixture(scope="module")
def service(services: dict[str, Path]) -> Path:
    return services["xgboost"]


def test_service_runtimes_are_all_tested() -> None:
    assert set(service_runtimes()) == set(SERVICE_RUNTIMES)


def test_service_layout(service: Path) -> None:
    assert _files(service) == {
        "README.md",
        "build_model.py",
        "ladle.toml",
        "models/churn-model/model.toml",
        "pyproject.toml",
        "requirements.txt",
        "tests/test_service.py",
        "Dockerfile",
        ".dockerignore",
        "constraints.txt",
    }
    _assert_fully_rendered(service)
    readme = (service / "README.md").read_text()
    assert readme.startswith("# churn-model\n")
    assert "/api/v1/models/churn-model/predict" in readme
    requirements = (service / "requirements.txt").read_text().splitlines()
    assert f"ladle[xgboost]>={ladle.__version__}" in requirements
    _ruff(service)


def test_service_config_is_valid_and_plans_the_built_model(service: Path, tmp_path: Path) -> None:
    pytest.importorskip("xgboost")
    config = load_server_config(service / "ladle.toml")
    assert config.repository_path == service / "models"
    model = merge_model_config(config, "churn-model", service / "models" / "churn-model" / "model.toml")
    assert model.runtime == "xgboost"

    # the build script writes a version folder that the repository plans with the xgboost runtime
    spec = importlib.util.spec_from_file_location("rendered_build_model", service / "build_model.py")
    assert spec is not None and spec.loader is not None
    build_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_model)
    repository = tmp_path / "models"
    artifact = build_model.build(repository, "1")
    assert artifact == repository / "churn-model" / "1" / "model.ubj"
    plan = ModelRepository(repository).plan("churn-model", config, PluginHost().discover())
    assert plan.versions == ("1",)
    assert plan.specs["1"].plugin == "xgboost"
    records, labels = build_model.examples(3)
    assert len(records) == len(labels) == 3
    assert len(records[0]["features"]) == 30


@pytest.mark.parametrize("runtime", sorted(SERVICE_RUNTIMES))
def test_service_passes_its_own_tests(services: dict[str, Path], runtime: str) -> None:
    for module in SERVICE_RUNTIMES[runtime]:
        pytest.importorskip(module)
    project = services[runtime]
    _assert_fully_rendered(project)
    _ruff(project)
    model = merge_model_config(load_server_config(project / "ladle.toml"), "churn-model", None)
    assert model.runtime is None  # the runtime is set in the model's own model.toml
    model_file = project / "models" / "churn-model" / "model.toml"
    assert merge_model_config(load_server_config(None), "churn-model", model_file).runtime == runtime
    assert (project / "handler.py").exists() == (runtime == "python")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
    assert not (project / "models" / "churn-model" / "1").exists(), "the test wrote into the project"


# Plugin ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("copier")
    destination = tmp_path_factory.mktemp("plugin") / "ladle-affine"
    assert (
        main(["new", "plugin", "affine-map", "--distribution", "ladle-affine", "--dest", str(destination)])
        == 0
    )
    return destination


def test_plugin_layout(plugin: Path) -> None:
    assert _files(plugin) == {
        "README.md",
        "pyproject.toml",
        "src/ladle_affine_map/__init__.py",
        "src/ladle_affine_map/py.typed",
        "src/ladle_affine_map/runtime.py",
        "tests/test_runtime.py",
    }
    _assert_fully_rendered(plugin)
    pyproject = (plugin / "pyproject.toml").read_text()
    assert 'name = "ladle-affine"' in pyproject
    assert '[project.entry-points.ladle]\nladle-affine = "ladle_affine_map"' in pyproject
    assert "class AffineMapRuntime(Runtime):" in (plugin / "src/ladle_affine_map/runtime.py").read_text()
    registration = (plugin / "src/ladle_affine_map/__init__.py").read_text()
    assert "import numpy" not in registration, "the registration module must stay free of framework imports"
    _ruff(plugin)


def test_plugin_installs_offline_and_passes_its_own_tests(plugin: Path, tmp_path: Path) -> None:
    python = make_environment(tmp_path / "venv")
    pip_install_offline(python, plugin)
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plugin,
        capture_output=True,
        text=True,
        timeout=120,
        env=open_environment(),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
    listed = subprocess.run(
        [str(python), "-m", "ladle.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=open_environment(),
    )
    by_name = {p["name"]: p for p in json.loads(listed.stdout)}
    assert by_name["ladle-affine"]["version"] == "0.1.0"
    assert by_name["ladle-affine"]["registers"][0]["name"] == "affine-map"


# ladle new: refusals -----------------------------------------------------------------------


@needs_copier
def test_new_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new", "service", "m", "--dest", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert _files(tmp_path) == {"keep.txt"}


@needs_copier
def test_new_renders_into_an_existing_folder_with_force(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new", "service", "m", "--dest", str(tmp_path), "--force"]) == 0
    assert {"keep.txt", "ladle.toml", "models/m/model.toml"} <= _files(tmp_path)


@needs_copier
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["service", "bad name"], "Validation error for question 'name'"),
        (["service", "../escape"], "Validation error for question 'name'"),
        (["service", "ok", "--runtime", "nope"], "no runtime 'nope' in the service template"),
        (["plugin", "Bad_Name"], "Validation error for question 'name'"),
        (["plugin", "ok", "--package", "not-a-package"], "Validation error for question 'package'"),
    ],
)
def test_new_refuses_invalid_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    destination = tmp_path / "out"
    assert main(["new", *args, "--dest", str(destination)]) == 1
    assert message in capsys.readouterr().err
    assert not destination.exists(), "a refused render leaves nothing behind"


@needs_copier
@pytest.mark.parametrize("runtime", ["nope", "../template", "parts"])
def test_the_template_itself_refuses_a_runtime_it_has_no_folder_for(tmp_path: Path, runtime: str) -> None:
    # What `copier copy` on the template folder does, without ladle new's own check.
    with pytest.raises(ValueError, match="Validation error for question 'runtime'"):
        render("service", tmp_path / "out", {"name": "ok", "runtime": runtime})
    assert not (tmp_path / "out").exists()


def test_new_needs_a_template(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["new", "website", "x"])
    assert info.value.code == 2
    assert "invalid choice: 'website'" in capsys.readouterr().err
