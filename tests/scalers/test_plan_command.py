"""``ladle plan``: the GPU plan of a repository or ladle.toml, end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GiB = 1 << 30
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
)

MODELS = {
    # model: (model.toml, version directories, a file each version holds)
    "vision": (
        'runtime = "torch"\ndevice = "cuda"\ninstances = 2\nversion_policy = "all"\n'
        '[resources]\ngpu_memory = "30GiB"\ngpu_share = 0.5\n',
        ("1", "2"),
        "model.pt",
    ),
    "tiny": ('runtime = "torch"\ndevice = "cuda"\n[resources]\ngpu_memory = "600MB"\n', ("1",), "model.pt"),
    "huge": ('runtime = "torch"\ndevice = "cuda"\n[resources]\ngpu_memory = "100GB"\n', ("1",), "model.pt"),
    "undeclared": ('runtime = "torch"\ndevice = "cuda"\n', ("1",), "model.pt"),
    "tabular": ('runtime = "xgboost"\n', ("3",), "model.json"),
}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for model, (table, versions, artifact) in MODELS.items():
        (root / model).mkdir(parents=True)
        (root / model / "model.toml").write_text(table)
        for version in versions:
            (root / model / version).mkdir()
            (root / model / version / artifact).write_bytes(b"not a model: a dry run never reads it")
    return root


def ladle(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ladle.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def placed(data: dict[str, Any]) -> dict[str, list[str]]:
    return {
        gpu["device"]: [f"{m['model']}/{m['version']}#{m['instance']}" for m in gpu["models"]]
        for gpu in data["gpus"]
    }


def test_plan_json_places_every_instance_and_says_what_cannot_be_placed(repository: Path) -> None:
    result = ladle("plan", repository, "--gpus", "4x80GiB", "--json")
    assert result.returncode == 1, result.stderr  # something cannot be placed
    data = json.loads(result.stdout)
    # four 33 GiB instances at 50% of the SMs each: two per GPU; the 600 MB one fits beside them
    assert placed(data) == {
        "cuda:0": ["tiny/1#0", "vision/1#0", "vision/1#1"],
        "cuda:1": ["vision/2#0", "vision/2#1"],
        "cuda:2": [],
        "cuda:3": [],
    }
    assert data["gpus_used"] == 2 == data["lower_bound"]
    first = data["gpus"][0]
    assert first["memory_bytes"] == 80 * GiB
    assert first["free_bytes"] == 80 * GiB - first["used_bytes"]
    assert first["thread_percentage"] == 100
    vision = next(m for m in first["models"] if m["model"] == "vision")
    assert vision["memory_bytes"] == 30 * GiB and vision["source"] == "declared"
    assert vision["env"] == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=33792M",
    }
    reasons = {u["model"]: u["reason"] for u in data["unplaced"]}
    assert set(reasons) == {"huge", "undeclared"}
    assert "more than the largest GPU" in reasons["huge"]
    assert reasons["undeclared"] == "no gpu_memory declared and nothing measured"
    assert data["cpu"] == [{"model": "tabular", "version": "3"}]
    assert data["headroom"] == 0.1 and data["gpus_source"] == "--gpus"


def test_plan_reads_a_ladle_toml_with_its_overrides_and_headroom(repository: Path, tmp_path: Path) -> None:
    for model in ("huge", "undeclared"):
        (repository / model / "model.toml").write_text('runtime = "torch"\n')  # now CPU models
    config = tmp_path / "ladle.toml"
    config.write_text(
        '[server]\nrepository = "models"\n'
        '[models.vision.resources]\ngpu_memory = "38GiB"\n'  # merges with the model's gpu_share
    )
    result = ladle("plan", config, "--gpus", "80GiB,80GiB,40GiB", "--headroom", "0", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert placed(data) == {
        "cuda:0": ["tiny/1#0", "vision/1#0", "vision/1#1"],  # 2 x 38 GiB and 0.6 GB fit 80 GiB exactly
        "cuda:1": ["vision/2#0", "vision/2#1"],
        "cuda:2": [],
    }
    vision = data["gpus"][0]["models"][1]
    assert vision["limit_bytes"] == 38 * GiB and vision["thread_percentage"] == 50
    assert data["unplaced"] == [] and data["headroom"] == 0


def test_plan_prints_tables_for_people(repository: Path) -> None:
    result = ladle("plan", repository, "--gpus", "2x80GiB")
    assert result.returncode == 1
    out = result.stdout
    for text in (
        "cuda:0",
        "vision",
        "cannot be placed",
        "huge",
        "on CPU (not packed): tabular/3",
        "lower bound 2",
    ):
        assert text in out, out


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--gpus", "4xx"], "--gpus"), (["--gpus", "2x80GiB", "--headroom", "-1"], "headroom")],
)
def test_bad_arguments_are_refused_naming_them(repository: Path, args: list[str], named: str) -> None:
    result = ladle("plan", repository, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and named in result.stderr


def test_a_bad_resources_table_is_a_config_error(repository: Path) -> None:
    (repository / "tiny" / "model.toml").write_text('runtime = "torch"\n[resources]\ngpu_memory = "lots"\n')
    result = ladle("plan", repository, "--gpus", "1x80GiB")
    assert result.returncode == 2
    assert "resources.gpu_memory" in result.stderr and "model.toml" in result.stderr


def test_plan_imports_no_framework(repository: Path) -> None:
    probe = (
        "import json, sys\n"
        "from ladle.cli import main\n"
        f"code = main(['plan', {str(repository)!r}, '--gpus', '4x80GiB', '--json'])\n"
        f"print(json.dumps({{'code': code, 'heavy': [m for m in {FRAMEWORKS!r} if m in sys.modules]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 1, "heavy": []}, result.stderr
