"""A third party's pip-installed runtime plugin is a first-class citizen.

Builds a tiny plugin distribution, installs it (offline) into a fresh virtual environment that
sees ladle and its dependencies, then discovers it, serves a batch through it and lists it.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from offline_venv import make_environment, open_environment, pip_install_offline

pytestmark = pytest.mark.slow

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-ladle-doubler"
version = "1.4.2"
dependencies = ["ladle"]

[project.entry-points.ladle]
acme-doubler = "acme_doubler"

[tool.setuptools]
packages = ["acme_doubler"]
"""

REGISTRATION = '''
"""Registration module: no heavy imports here."""
from ladle import hookimpl


@hookimpl
def register_runtimes(register):
    register("doubler", "acme_doubler.runtime:DoublerRuntime", description="multiplies its input")
'''

RUNTIME = """
import numpy as np

from ladle import InvalidInputError, Runtime, Signature, TensorSpec


class DoublerRuntime(Runtime):
    name = "doubler"

    def load(self):
        self.factor = float(self.spec.options.get("factor", 2))

    def signature(self):
        return Signature(
            inputs=(TensorSpec("input", "FP32", (-1, 3)),), outputs=(TensorSpec("output", "FP32", (-1, 3)),)
        )

    def predict(self, batch):
        data = batch.inputs["input"]
        if not np.isfinite(data).all():
            raise InvalidInputError("input must be finite")
        return {"output": data * self.factor}
"""

SERVE = """
import asyncio, json, sys
import numpy as np
import acme_doubler
from ladle import Batch, InferenceRequest, Instance, PluginHost, RuntimeSpec, ThreadExecutor


async def main():
    host = PluginHost().discover()
    record = host.records["acme-doubler"]
    spec = RuntimeSpec(plugin="doubler", artifact=sys.argv[1], model="m", version="1", options={"factor": 3})
    instance = Instance(spec, ThreadExecutor(spec, host))
    await instance.start()
    ready = instance.state.value
    requests = [
        InferenceRequest("m", {"input": np.full((rows, 3), value, np.float32)})
        for rows, value in [(2, 1.0), (1, np.nan), (3, 2.0)]
    ]
    results = await instance.execute(Batch.from_requests(requests))
    await instance.stop()
    print(json.dumps({
        "module": acme_doubler.__file__,
        "plugin": host.get("runtime", "doubler").plugin,
        "version": record.version,
        "ready": ready,
        "stopped": instance.state.value,
        "signature": instance.signature.to_dict() if instance.signature else None,
        "results": [
            {"error": r.code, "status": r.status} if isinstance(r, Exception) else r["output"].tolist()
            for r in results
        ],
    }))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("third_party")
    project = root / "acme-ladle-doubler"
    (project / "acme_doubler").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "acme_doubler" / "__init__.py").write_text(textwrap.dedent(REGISTRATION))
    (project / "acme_doubler" / "runtime.py").write_text(textwrap.dedent(RUNTIME))
    python = make_environment(root / "venv")
    pip_install_offline(python, project)
    return python


def _run(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=open_environment()
    )
    assert result.returncode == 0, result.stderr
    return result


def test_plugin_is_invisible_outside_its_environment() -> None:
    from ladle import PluginHost

    assert "acme-doubler" not in PluginHost().discover().records


def test_installed_plugin_serves_a_batch(environment: Path, tmp_path: Path) -> None:
    output = _run(environment, "-c", SERVE, str(tmp_path)).stdout
    data = json.loads(output.splitlines()[-1])
    venv_root = environment.parent.parent
    assert Path(data["module"]).is_relative_to(venv_root), "the plugin was not imported from its installation"
    assert data["plugin"] == "acme-doubler"
    assert data["version"] == "1.4.2"
    assert (data["ready"], data["stopped"]) == ("ready", "stopped")
    assert data["signature"]["inputs"][0]["name"] == "input"
    good, bad, other = data["results"]
    assert good == [[3.0, 3.0, 3.0]] * 2
    assert bad == {"error": "invalid_input", "status": 400}  # isolated to its own request
    assert other == [[6.0, 6.0, 6.0]] * 3


def test_ladle_plugins_lists_it(environment: Path, tmp_path: Path) -> None:
    plugins = json.loads(_run(environment, "-m", "ladle.cli", "plugins", "--json").stdout)
    by_name = {p["name"]: p for p in plugins}
    acme = by_name["acme-doubler"]
    assert acme["version"] == "1.4.2"
    assert acme["status"] == "loaded"
    assert acme["source"] == "acme_doubler"
    assert acme["hooks"] == ["register_runtimes"]
    assert [(r["family"], r["name"], r["missing"]) for r in acme["registers"]] == [("runtime", "doubler", [])]
    assert by_name["runtime-xgboost"]["status"] == "loaded"  # built-ins still there, side by side

    config = tmp_path / "ladle.toml"
    config.write_text('[plugins]\ndisabled = ["acme-doubler"]\n')
    plugins = json.loads(
        _run(environment, "-m", "ladle.cli", "plugins", "--json", "--config", str(config)).stdout
    )
    assert {p["name"]: p["status"] for p in plugins}["acme-doubler"] == "disabled"
