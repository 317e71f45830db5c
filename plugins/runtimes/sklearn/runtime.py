"""The scikit-learn runtime: an estimator or a Pipeline (its final step decides what it answers).

Artifacts, tried in this order in the version directory:

- ``model.skops`` (``skops.io.dump``): loaded with ``skops.io.load``, which builds objects from an
  allow-list instead of running code. Beyond skops' own defaults, the runtime trusts the classes
  (and numpy ufuncs) that scikit-learn, numpy and scipy define, the code serving runs anyway; any
  other type in the file (your own transformer, a plain function, ``builtins``...) is refused with
  a ``ConfigError`` naming it, unless the model sets ``trust_code``.
- ``model.joblib`` / ``model.pkl`` (``joblib.dump`` / ``pickle.dump``): unpickling runs arbitrary
  code, so these load only when the model sets ``trust_code``.

The signature comes from the estimator: one input ``input``, FP64 ``[-1, n_features_in_]`` (one
row per sample, columns in training order; scikit-learn computes in float64). A single matrix
input rather than one tensor per feature keeps V2 clients to one tensor and the ladle API to
``{"input": [...]}`` records; the training column names (``feature_names_in_``, for a model
fitted on a DataFrame) are listed by ``describe()`` as ``feature_names``. ``signature = {...}``
in the model's config overrides it (e.g. to take FP32). Outputs: ``predict`` (class labels keep
the estimator's label dtype; string labels are BYTES), and for classifiers with
``predict_proba`` also ``predict_proba`` FP64 ``[-1, n_classes]``.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import skops.io
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InvalidInputError,
    Runtime,
    Signature,
    TensorSpec,
    datatype_of,
    named_input,
)

from . import ARTIFACTS

log = logging.getLogger(__name__)

OPTIONS = ("outputs",)
INPUT = "input"
#: Output name -> the estimator method that computes it, in the order they are answered.
METHODS = ("predict", "predict_proba")
#: Libraries whose own classes a skops file may hold without ``trust_code``.
TRUSTED_LIBRARIES = frozenset({"sklearn", "numpy", "scipy"})

Array = np.ndarray[Any, Any]


def _library_class(name: str) -> bool:
    """Whether ``name`` (``module.Class``, as skops reports it) is a class or numpy ufunc defined by
    one of ``TRUSTED_LIBRARIES``. The object is looked up, so a name that merely re-exports a
    foreign object from inside those packages (``sklearn.x.pickle``) is not trusted."""
    module_name, _, attribute = name.rpartition(".")
    if module_name.partition(".")[0] not in TRUSTED_LIBRARIES:
        return False
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except Exception:  # an unknown or broken name is simply not trusted
        return False
    owner = str(getattr(found, "__module__", None) or "")
    return isinstance(found, type | np.ufunc) and owner.partition(".")[0] in TRUSTED_LIBRARIES


def _as_bytes(array: Array) -> Array:
    """String labels as a BYTES tensor (an object array of ``bytes``, whatever the string lengths)."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    flat[:] = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
    return out


def _describe_estimator(model: Any) -> str:
    if isinstance(model, Pipeline):
        return f"Pipeline({', '.join(_describe_estimator(step) for _, step in model.steps)})"
    return type(model).__name__


def _held_bytes(model: Any) -> int:
    """About the memory the estimator holds: its pickled size, arrays counted without being copied."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        pickled = pickle.dumps(model, protocol=5, buffer_callback=buffers.append)
    except Exception:
        return 0
    return len(pickled) + sum(buffer.raw().nbytes for buffer in buffers)


class SklearnRuntime(Runtime):
    """Options: ``outputs``, the outputs to answer (default: every one the estimator has, of
    ``predict`` and ``predict_proba``). See the module docstring for artifacts and signature.

    Input the estimator refuses (the wrong number of features, NaN for an estimator that takes
    none) is answered as ``InvalidInputError`` with scikit-learn's message.
    """

    name = "sklearn"

    def load(self) -> None:
        options = self.check_options(OPTIONS)
        path = self.artifact(ARTIFACTS, f"scikit-learn model file ({', '.join(ARTIFACTS)})")
        self.format = "skops" if path.suffix == ".skops" else path.suffix.lstrip(".")
        try:
            self.model = self._load_skops(path) if self.format == "skops" else self._load_pickled(path)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{path}: not a loadable {self.format} model: {type(exc).__name__}: {exc}", file=str(path)
            ) from None
        available = [m for m in METHODS if callable(getattr(self.model, m, None))]
        if "predict" not in available:
            raise ConfigError(
                f"{path}: holds a {type(self.model).__name__}, which has no predict method", file=str(path)
            )
        self.outputs = self._chosen_outputs(options.get("outputs"), available)
        self.methods: dict[str, Callable[[Array], Any]] = {n: getattr(self.model, n) for n in self.outputs}
        features = getattr(self.model, "n_features_in_", None)
        self.features = int(features) if features is not None else None
        names = getattr(self.model, "feature_names_in_", None)
        self.feature_names = [str(n) for n in names] if names is not None else None
        if self.feature_names is not None:
            # A model fitted on a DataFrame warns on every array it is given; the columns are
            # documented (describe) and their count is checked here instead.
            warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
        configured = super().signature()
        if configured is None and self.features is None:
            raise ConfigError(
                f"{path}: the {_describe_estimator(self.model)} does not record its number of "
                "features (n_features_in_); give the model a signature = {...} in its config",
                file=str(path),
            )
        self._limit_jobs()
        try:
            self._output_specs = self._probe_outputs() if configured is None else ()
        except InvalidInputError as exc:
            raise ConfigError(
                f"{path}: the {_describe_estimator(self.model)} fails on a row of zeros ({exc.message}), "
                "so its outputs cannot be measured; give the model a signature = {...} in its config",
                file=str(path),
            ) from None
        self.model_bytes = _held_bytes(self.model) or path.stat().st_size
        log.info("sklearn %s: %s, outputs %s", path, _describe_estimator(self.model), self.outputs)

    def _load_skops(self, path: Path) -> Any:
        beyond_skops = skops.io.get_untrusted_types(file=path)
        untrusted = [name for name in beyond_skops if not _library_class(name)]
        if untrusted and not self.spec.trust_code:
            raise ConfigError(
                f"{path}: holds types that are not classes of scikit-learn, numpy or scipy: {untrusted}; "
                "building them could run arbitrary code. If you trust this model's source, set "
                f"trust_code = true for model {self.spec.model!r} (model.toml or ladle.toml)",
                file=str(path),
                key="trust_code",
                untrusted_types=untrusted,
            )
        return skops.io.load(path, trusted=beyond_skops)  # each one now vouched for

    def _load_pickled(self, path: Path) -> Any:
        if not self.spec.trust_code:
            raise ConfigError(
                f"{path}: refusing to unpickle the model: loading a {self.format} file runs arbitrary "
                f"code. If you trust this model's source, set trust_code = true for model "
                f"{self.spec.model!r} (model.toml or ladle.toml); or save it with skops "
                "(skops.io.dump(model, 'model.skops')), which loads without running code",
                file=str(path),
                key="trust_code",
            )
        return joblib.load(path)  # reads joblib files and plain pickles alike

    def _limit_jobs(self) -> None:
        """Every ``n_jobs`` in the estimator (nested steps included) set to the instance's thread
        budget: one saved with ``n_jobs=-1`` would otherwise use every core on each batch."""
        if not isinstance(self.model, BaseEstimator):
            return
        names = [k for k in self.model.get_params(deep=True) if k == "n_jobs" or k.endswith("__n_jobs")]
        if names:
            self.model.set_params(**dict.fromkeys(names, self.spec.threads))

    def _chosen_outputs(self, chosen: Any, available: list[str]) -> list[str]:
        if chosen is None:
            return available
        if isinstance(chosen, str) or not isinstance(chosen, list | tuple) or not chosen:
            raise ConfigError(f"sklearn option outputs must be a non-empty list of names, got {chosen!r}")
        unknown = [str(name) for name in chosen if name not in available]
        if unknown:
            raise ConfigError(
                f"sklearn option outputs: {unknown} not offered by this {_describe_estimator(self.model)}; "
                f"it offers {available}"
            )
        return [str(name) for name in chosen]

    def _probe_outputs(self) -> tuple[TensorSpec, ...]:
        """Output specs from one row of zeros: the shapes and datatypes the estimator really returns."""
        assert self.features is not None
        probe = self._compute(np.zeros((1, self.features), dtype=np.float64))
        return tuple(
            TensorSpec(name, datatype_of(value), (-1, *value.shape[1:])) for name, value in probe.items()
        )

    def signature(self) -> Signature | None:
        configured = super().signature()
        if configured is not None:
            return configured
        return Signature(
            inputs=(TensorSpec(INPUT, "FP64", (-1, self.features if self.features is not None else -1)),),
            outputs=self._output_specs,
        )

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "format": self.format,
            "estimator": _describe_estimator(self.model),
            "outputs": list(self.outputs),
        }
        if self.feature_names is not None:
            described["feature_names"] = self.feature_names
        return described

    def predict(self, batch: Batch) -> Arrays:
        data = named_input(batch.inputs, INPUT, (INPUT,))
        if data.ndim != 2 or (self.features is not None and data.shape[1] != self.features):
            expected = [-1, self.features if self.features is not None else -1]
            raise InvalidInputError(
                f"input {INPUT!r} must have shape {expected} ({self.features} features per row), "
                f"got {list(data.shape)}",
                input=INPUT,
                expected=expected,
            )
        if data.dtype.kind not in "fiub":
            raise InvalidInputError(f"input {INPUT!r} must be numeric, got {data.dtype}", input=INPUT)
        return self._compute(data)

    def _compute(self, data: Array) -> Arrays:
        results: Arrays = {}
        for name, method in self.methods.items():
            try:
                value = np.asarray(method(data))
            except ValueError as exc:  # scikit-learn's input validation: NaN, infinity, wrong width
                raise InvalidInputError(str(exc), input=INPUT) from None
            results[name] = _as_bytes(value) if value.dtype.kind in "USO" else value
        return results

    def memory_bytes(self) -> int:
        return self.model_bytes

    def unload(self) -> None:
        self.__dict__.pop("methods", None)
        self.__dict__.pop("model", None)
