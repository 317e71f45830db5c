"""``ladle batch --ray``: Ray Data ``map_batches`` over actors writes what ``ladle batch`` writes,
and resumes alike. Runs only where Ray Data is installed (``ladle[ray]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ladle.cli import main
from ladle.testing.models import breast_cancer, build_xgboost

pytest.importorskip("ray.data")


def test_ray_resumes_and_writes_byte_for_byte_what_ladle_batch_writes(
    tmp_path: Path, ray_session: Any
) -> None:
    build_xgboost(tmp_path / "models" / "bc" / "1", file_name="model.ubj")
    features, _ = breast_cancer()
    source = tmp_path / "in.jsonl"
    records = [
        orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n" for i, row in enumerate(features[:300])
    ]
    source.write_bytes(b"".join(records) + b"not json\n")
    plain, on_ray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    common = [str(tmp_path / "models"), "bc", "--input", str(source), "--batch-size", "32", "--quiet"]
    assert main(["batch", *common, "--output", str(plain)]) == 0
    lines = plain.read_bytes().splitlines(keepends=True)
    assert len(lines) == 301 and orjson.loads(lines[-1])["error"]["code"] == "invalid_request"
    on_ray.write_bytes(b"".join(lines[:100]) + lines[100][:10])  # as a kill mid-line leaves it
    assert main(["batch", *common, "--output", str(on_ray), "--ray", "--ray-actors", "1", "--resume"]) == 0
    assert on_ray.read_bytes() == plain.read_bytes()
