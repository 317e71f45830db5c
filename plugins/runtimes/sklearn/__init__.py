"""scikit-learn runtime plugin: serves an estimator or Pipeline saved with skops (``model.skops``),
or, when the model sets ``trust_code``, with joblib or pickle (``model.joblib`` / ``model.pkl``)."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

#: Tried in this order; the first loads without running code, the other two unpickle.
ARTIFACTS = ("model.skops", "model.joblib", "model.pkl")


def detect(directory: Path) -> bool:
    """``model.skops``, ``model.joblib`` or ``model.pkl`` in the version directory."""
    return any((directory / name).is_file() for name in ARTIFACTS)


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "sklearn",
        "ladle.plugins.runtimes.sklearn.runtime:SklearnRuntime",
        requires=["sklearn", "skops"],
        extra="sklearn",
        detect=detect,
        description="scikit-learn estimator or Pipeline: skops (safe by default), joblib/pickle with "
        "trust_code; predict and predict_proba",
    )
