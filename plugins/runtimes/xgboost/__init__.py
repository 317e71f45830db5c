"""XGBoost runtime plugin: serves a Booster saved as ``model.ubj`` or ``model.json``."""

from __future__ import annotations

import re
from pathlib import Path

from ladle import hookimpl

ARTIFACTS = ("model.ubj", "model.json")

# XGBoost writes the "learner" object first and "version" last; only the ends of a large file are read.
_JSON_HEAD = re.compile(rb'^\s*\{\s*"learner"\s*:')


def detect(directory: Path) -> bool:
    """``model.ubj``, or a ``model.json`` whose content is an XGBoost model (it opens with ``"learner"``)."""
    if (directory / "model.ubj").is_file():
        return True
    candidate = directory / "model.json"
    if not candidate.is_file():
        return False
    with candidate.open("rb") as f:
        head = f.read(256)
        if _JSON_HEAD.match(head):
            return True
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 256))
        tail = f.read()
    return b'"learner"' in head and b'"version"' in tail


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "xgboost",
        "ladle.plugins.runtimes.xgboost.runtime:XGBoostRuntime",
        requires=["xgboost"],
        extra="xgboost",
        detect=detect,
        description="XGBoost Booster (UBJ or JSON); device='cuda' when asked and available",
    )
