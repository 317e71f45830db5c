"""The README's third-party runtime plugin, extracted as written, passes the runtime conformance kit."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from ladle import PluginHost, RuntimeSpec
from ladle.testing.conformance import RuntimeConformance

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> dict[str, str]:
    """The README's python blocks that start with a ``# acme_ladle/...`` file name, by file."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# acme_ladle/"):
            found[first.split()[1]] = block
    return found


@pytest.fixture(scope="module", autouse=True)
def acme_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    blocks = _blocks()
    assert set(blocks) == {"acme_ladle/__init__.py", "acme_ladle/runtime.py"}
    for name, source in blocks.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(source)
    sys.path.insert(0, str(root))  # worker processes inherit it through the environment below
    import os

    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    return root


class TestReadmeRuntime(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        np.save(directory / "weights.npy", np.linspace(-1.0, 1.0, 4))
        return RuntimeSpec(plugin="acme", artifact=str(directory))

    def sample_inputs(self, rows: int, seed: int) -> dict[str, np.ndarray]:
        return {"input": np.random.default_rng(seed).random((rows, 4), dtype=np.float32)}

    def plugin_host(self) -> PluginHost:
        host = PluginHost()
        host.add_module("acme_ladle")
        return host.discover()


def test_the_example_is_detected_from_its_artifact(tmp_path: Path) -> None:
    np.save(tmp_path / "weights.npy", np.ones(3))
    host = PluginHost()
    host.add_module("acme_ladle")
    host.discover()
    assert host.detect_runtime(tmp_path) == "acme"
