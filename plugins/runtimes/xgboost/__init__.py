"""XGBoost runtime plugin: serves a Booster saved as ``model.ubj`` or ``model.json``."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

ARTIFACTS = ("model.ubj", "model.json")


def detect(directory: Path) -> bool:
    """``model.ubj``, or a ``model.json`` whose content is an XGBoost model (it has a ``learner``)."""
    if (directory / "model.ubj").is_file():
        return True
    candidate = directory / "model.json"
    if not candidate.is_file():
        return False
    with candidate.open("rb") as f:
        head = f.read(4096)
    return b'"learner"' in head and b'"version"' in head


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
