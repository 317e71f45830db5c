"""The service template's Dockerfile, checked without a Docker engine: parsed with dockerfile-parse,
its shell steps run with stand-ins for pip and python, its entry point parsed by ``ladle serve``'s
own parser and its health check run against a real server."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dockerfile_parse")
pytest.importorskip("copier")

from dockerfile_parse import DockerfileParser

from ladle.commands import serve
from ladle.commands.new import render, service_runtimes
from ladle.server import Server, load_config
from ladle.testing.models import build_python_handler
from ladle.testing.server import run_server

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ["ladle", "serve", "/models"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every runtime's service, rendered (not built)."""
    root = tmp_path_factory.mktemp("dockerfiles")
    return {
        runtime: render("service", root / runtime, {"name": "Churn.Model", "runtime": runtime})
        for runtime in service_runtimes()
    }


def _stages(project: Path) -> list[list[dict[str, Any]]]:
    """The instructions of each build stage, in order (instructions before the first FROM dropped)."""
    stages: list[list[dict[str, Any]]] = []
    for item in DockerfileParser(path=str(project / "Dockerfile")).structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(item["value"]) for item in stage if item["instruction"] == instruction]


def _ladle_extras(project: Path) -> str:
    """The extras of ladle that the project's requirements.txt names (its runtime's extra)."""
    text = (project / "requirements.txt").read_text()
    found = re.search(r"^ladle(?:\[([^\]]*)\])?", text, re.MULTILINE)
    assert found is not None, text
    return found.group(1) or ""


def _run_shell(command: str, env: dict[str, str], cwd: Path) -> list[str]:
    """Run a RUN step under ``sh`` with pip and python replaced by stand-ins that print their call."""
    stubs = 'pip() { echo "pip $*"; }\npython() { echo "python $*"; }\n'
    result = subprocess.run(
        ["sh", "-c", stubs + command], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_every_runtime_has_a_dockerfile_and_a_dockerignore(projects: dict[str, Path]) -> None:
    assert {"xgboost", "onnx", "python", "torch", "jax", "causal-lm"} <= set(projects)
    for project in projects.values():
        assert (project / "Dockerfile").read_text().startswith("# syntax=docker/dockerfile:1\n")
        assert (project / ".dockerignore").is_file()


@pytest.mark.parametrize("runtime", sorted(service_runtimes()))
def test_the_image_is_multi_stage_and_runs_ladle_as_a_user(projects: dict[str, Path], runtime: str) -> None:
    project = projects[runtime]
    parser = DockerfileParser(path=str(project / "Dockerfile"))
    assert parser.is_multistage
    stages = _stages(project)
    assert len(stages) == 3
    names = [item["value"].split(" AS ")[-1] for stage in stages[:-1] for item in stage[:1]]
    final = stages[-1]
    # The final stage copies only from earlier stages: no build context, no build tools.
    sources = [v.split()[0].removeprefix("--from=") for v in _values(final, "COPY")]
    assert sources and set(sources) <= set(names)
    (user,) = _values(final, "USER")
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and int(uid) > 0
    (account,) = _values(final, "RUN")
    assert f"--uid {uid}" in account
    (entry,) = _values(final, "ENTRYPOINT")
    arguments = json.loads(entry)
    assert arguments[:3] == ENTRY
    command = argparse.ArgumentParser()
    serve.configure(command)
    options = command.parse_args(arguments[2:])  # ladle serve accepts exactly these arguments
    assert (options.path, options.host) == (Path("/models"), "0.0.0.0")
    assert options.port == load_config(project / "ladle.toml").server.port
    (exposed,) = _values(final, "EXPOSE")
    assert exposed.split() == ["8000", "8001"]
    (health,) = _values(final, "HEALTHCHECK")
    assert "/v2/health/ready" in health


@pytest.mark.parametrize("runtime", sorted(service_runtimes()))
def test_the_extras_build_argument_installs_the_runtime(projects: dict[str, Path], runtime: str) -> None:
    project = projects[runtime]
    deps = _stages(project)[0]
    args = dict(v.split("=", 1) for v in _values(deps, "ARG"))
    assert args["LADLE_EXTRAS"] == _ladle_extras(project)
    (install,) = _values(deps, "RUN")
    env = {"PATH": "/usr/bin:/bin", **args}
    lines = _run_shell(install, env, project)
    assert lines[0] == "python -m venv /opt/ladle"
    requirement = f"ladle[{args['LADLE_EXTRAS']}]" if args["LADLE_EXTRAS"] else "ladle"
    assert lines[-1] == f"pip install -c /tmp/constraints.txt {requirement}>=0.1.0"
    needs_torch = bool({"torch", "llm"} & set(args["LADLE_EXTRAS"].split(",")))
    torch_line = f"pip install --index-url {args['TORCH_INDEX_URL']} -c /tmp/constraints.txt torch"
    assert (torch_line in lines) == needs_torch
    assert "/whl/cpu" in args["TORCH_INDEX_URL"]


def test_torch_is_pinned_as_the_project_pins_it(projects: dict[str, Path]) -> None:
    project = projects["torch"]
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch")]
    ours = [
        line for line in (project / "constraints.txt").read_text().splitlines() if line.startswith("torch")
    ]
    assert ours == pins == ["torch==2.13.0"]
    lines = _run_shell(_values(_stages(project)[0], "RUN")[0], {"LADLE_EXTRAS": "xgboost,llm"}, project)
    assert any("--index-url" in line and line.endswith(" torch") for line in lines)


def test_every_build_context_file_exists_and_is_not_ignored(projects: dict[str, Path]) -> None:
    for project in projects.values():
        ignored = {
            line.strip()
            for line in (project / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        for stage in _stages(project):
            for value in _values(stage, "COPY"):
                if value.startswith("--from="):
                    continue
                *sources, _ = shlex.split(value)
                for source in sources:
                    assert (project / source).exists(), source
                    assert source not in ignored, source
        for needed in ("build_model.py", "models", "requirements.txt", "constraints.txt", "ladle.toml"):
            assert needed not in ignored


def test_the_model_is_built_only_when_no_version_is_shipped(projects: dict[str, Path]) -> None:
    project = projects["xgboost"]
    build = [v for v in _values(_stages(project)[1], "RUN") if "build_model.py" in v]
    assert len(build) == 1
    env = {"PATH": "/usr/bin:/bin"}
    assert _run_shell(build[0], env, project) == ["python build_model.py"]
    (project / "models" / "Churn.Model" / "3").mkdir()
    try:
        assert _run_shell(build[0], env, project) == []
    finally:
        (project / "models" / "Churn.Model" / "3").rmdir()


def test_the_health_check_reads_readiness(projects: dict[str, Path], tmp_path: Path) -> None:
    (health,) = _values(_stages(projects["python"])[-1], "HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    build_python_handler(tmp_path / "m" / "1", handler_file=True)
    (tmp_path / "m" / "model.toml").write_text('runtime = "python"\ntrust_code = true\n')
    with run_server(Server(load_config(tmp_path))) as running:
        port = running.url.rsplit(":", 1)[1]
        script = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        ready = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
        assert ready.returncode == 0, ready.stderr
        missing = script.replace("/v2/health/ready", "/v2/health/nowhere")
        assert (
            subprocess.run([sys.executable, "-c", missing], capture_output=True, timeout=30).returncode != 0
        )


def test_kubernetes_manifests_run_the_image_the_readme_builds(
    projects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("kubernetes")
    yaml = pytest.importorskip("yaml")
    from ladle.cli import main

    project = projects["python"]
    (tag,) = re.findall(r"^docker build -t (\S+) \.$", (project / "README.md").read_text(), re.MULTILINE)
    subprocess.run([sys.executable, "build_model.py"], cwd=project, check=True, capture_output=True)
    try:
        assert main(["k8s", "render", str(project), "--out", "-"]) == 0
    finally:
        for version in (project / "models" / "Churn.Model").iterdir():
            if version.is_dir():
                shutil.rmtree(version)
    manifests = {d["kind"]: d for d in yaml.safe_load_all(capsys.readouterr().out)}
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{tag}:latest"
    final = _stages(project)[-1]
    assert [str(p["containerPort"]) for p in container["ports"]] == _values(final, "EXPOSE")[0].split()
    (user,) = _values(final, "USER")
    security = manifests["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
