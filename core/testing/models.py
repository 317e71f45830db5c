"""Builders of small, real models for tests, examples and the demo.

Each builder trains or assembles a model offline (scikit-learn's bundled breast-cancer data, or
fixed random weights), writes it into ``directory`` (created if needed) under the file name its
runtime detects, and returns the artifact's path. Frameworks are imported inside each function, so
importing this module costs nothing and the XGBoost and ONNX builders never import torch or jax.

The neural builders (ONNX, torch, JAX, the Python handler) all encode the same scikit-learn MLP
(30 standardised features, 16 ReLU units, a sigmoid output), so every runtime serving them must
return the same ``probability`` for the same rows: input ``"input"`` FP32 ``[-1, 30]``, output
``"probability"`` FP32 ``[-1]``.
"""

from __future__ import annotations

import functools
import logging
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..envelope import Arrays, Batch
from ..errors import InvalidInputError
from ..tensors import Signature, TensorSpec

__all__ = [
    "FEATURES",
    "MLPWeights",
    "NumpyMLPHandler",
    "TokenClassifierWeights",
    "breast_cancer",
    "build_jax_mlp",
    "build_onnx_int8",
    "build_onnx_mlp",
    "build_onnx_token_classifier",
    "build_python_handler",
    "build_torch_mlp",
    "build_torch_token_classifier",
    "build_torchscript_mlp",
    "build_xgboost",
    "mlp_weights",
    "token_classifier_weights",
]

#: Number of features of the breast-cancer data set.
FEATURES = 30

Array = np.ndarray[Any, Any]


def _directory(directory: Path | str) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def breast_cancer() -> tuple[Array, Array]:
    """scikit-learn's bundled breast-cancer data: ``X`` float32 ``[569, 30]``, ``y`` int ``[569]``."""
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    return np.ascontiguousarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def build_xgboost(
    directory: Path | str,
    *,
    n_estimators: int = 20,
    max_depth: int = 3,
    file_name: str = "model.json",
    seed: int = 0,
) -> Path:
    """An XGBoost binary classifier of the breast-cancer data, saved as a Booster (JSON or UBJ by suffix).

    The benchmark uses ``n_estimators=200, max_depth=6``.
    """
    import xgboost

    features, labels = breast_cancer()
    model = xgboost.XGBClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1, tree_method="hist"
    )
    model.fit(features, labels)
    path = _directory(directory) / file_name
    model.get_booster().save_model(str(path))
    return path


@dataclass(frozen=True)
class MLPWeights:
    """A trained one-hidden-layer MLP with the standardisation folded in front of it (all float32).

    ``probability(x) = sigmoid(relu(((x - mean) / scale) @ w1 + b1) @ w2 + b2)[:, 0]``
    """

    mean: Array
    scale: Array
    w1: Array
    b1: Array
    w2: Array
    b2: Array

    def probability(self, features: Array) -> Array:
        """The reference forward pass in numpy (float64 inside, float32 out)."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = (hidden @ self.w2 + self.b2)[:, 0]
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)

    def arrays(self) -> dict[str, Array]:
        return {name: getattr(self, name) for name in ("mean", "scale", "w1", "b1", "w2", "b2")}


@functools.cache
def mlp_weights(hidden: int = 16, seed: int = 0) -> MLPWeights:
    """Train (once per process) a scikit-learn MLP classifier on the breast-cancer data."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    features, labels = breast_cancer()
    scaler = StandardScaler().fit(features)
    # Strong regularisation keeps many probabilities away from 0 and 1, so comparisons mean something.
    model = MLPClassifier(
        hidden_layer_sizes=(hidden,), solver="lbfgs", alpha=10.0, max_iter=2000, random_state=seed
    )
    model.fit(scaler.transform(features), labels)

    def f32(value: Any) -> Array:
        return np.ascontiguousarray(value, dtype=np.float32)

    return MLPWeights(
        mean=f32(scaler.mean_),
        scale=f32(scaler.scale_),
        w1=f32(model.coefs_[0]),
        b1=f32(model.intercepts_[0]),
        w2=f32(model.coefs_[1]),
        b2=f32(model.intercepts_[1]),
    )


def _onnx_mlp_model(weights: MLPWeights, batch: int | str = "batch") -> Any:
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(array, name) for name, array in weights.arrays().items()]
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "breast_cancer_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ladle")
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    return model


def build_onnx_mlp(
    directory: Path | str, *, batch: int | None = None, hidden: int = 16, seed: int = 0
) -> Path:
    """The breast-cancer MLP as an FP32 ONNX graph built with ``onnx.helper``: ``model.onnx``.

    ``batch`` fixes the batch dimension (as many exported graphs do); by default it is free.
    """
    import onnx

    model = _onnx_mlp_model(mlp_weights(hidden, seed), "batch" if batch is None else batch)
    onnx.checker.check_model(model)
    path = _directory(directory) / "model.onnx"
    onnx.save(model, str(path))
    return path


def build_onnx_int8(directory: Path | str, *, hidden: int = 16, seed: int = 0) -> Path:
    """The breast-cancer MLP with int8 weights (``onnxruntime.quantization.quantize_dynamic``)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = _directory(directory) / "model.onnx"
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "fp32.onnx"
        onnx.save(_onnx_mlp_model(mlp_weights(hidden, seed)), str(source))
        root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing on the root logger
        try:
            quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return path


@dataclass(frozen=True)
class TokenClassifierWeights:
    """An embedding bag classifier: ``logits = mean(embedding[tokens], 1) @ weight + bias``."""

    embedding: Array
    weight: Array
    bias: Array

    def logits(self, tokens: Array) -> Array:
        return np.asarray(self.embedding[tokens].mean(axis=1) @ self.weight + self.bias, dtype=np.float32)


def token_classifier_weights(
    vocab: int = 32, dim: int = 8, classes: int = 3, seed: int = 0
) -> TokenClassifierWeights:
    """Fixed random weights of the token classifier (its inputs have value limits: ``0 <= token < vocab``)."""
    rng = np.random.default_rng(seed)
    return TokenClassifierWeights(
        embedding=rng.standard_normal((vocab, dim)).astype(np.float32),
        weight=rng.standard_normal((dim, classes)).astype(np.float32),
        bias=rng.standard_normal(classes).astype(np.float32),
    )


def build_onnx_token_classifier(
    directory: Path | str, *, vocab: int = 32, dim: int = 8, classes: int = 3, seq: int = 6, seed: int = 0
) -> Path:
    """``tokens`` INT64 ``[-1, seq]`` -> ``logits`` and ``probability`` FP32 ``[-1, classes]``.

    A token id outside ``[0, vocab)`` is a bad input value (onnxruntime refuses it in ``Gather``).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = token_classifier_weights(vocab, dim, classes, seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "tokens"], ["embedded"]),
            helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probability"], axis=-1),
        ],
        "token_classifier",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", seq])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", classes]),
        ],
        [
            numpy_helper.from_array(weights.embedding, "embedding"),
            numpy_helper.from_array(weights.weight, "weight"),
            numpy_helper.from_array(weights.bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ladle")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = _directory(directory) / "model.onnx"
    onnx.save(model, str(path))
    return path


def _torch_mlp(weights: MLPWeights) -> Any:
    import torch

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(weights.mean.copy()))
            self.register_buffer("scale", torch.from_numpy(weights.scale.copy()))
            self.hidden = torch.nn.Linear(weights.w1.shape[0], weights.w1.shape[1])
            self.out = torch.nn.Linear(weights.w2.shape[0], 1)
            with torch.no_grad():
                self.hidden.weight.copy_(torch.from_numpy(weights.w1.T.copy()))
                self.hidden.bias.copy_(torch.from_numpy(weights.b1.copy()))
                self.out.weight.copy_(torch.from_numpy(weights.w2.T.copy()))
                self.out.bias.copy_(torch.from_numpy(weights.b2.copy()))

        def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:
            x = (input - self.mean) / self.scale  # type: ignore[operator]  # buffers, typed as modules
            logits = self.out(torch.relu(self.hidden(x)))
            return {"probability": torch.sigmoid(logits).squeeze(-1)}

    return MLP().eval()


def build_torch_mlp(
    directory: Path | str, *, static_batch: bool = False, hidden: int = 16, seed: int = 0
) -> Path:
    """The breast-cancer MLP as a ``torch.export`` program: ``model.pt2``.

    With ``static_batch=True`` the program is exported for exactly one row (no dynamic dimension),
    as many exported programs in the wild are.
    """
    import torch

    module = _torch_mlp(mlp_weights(hidden, seed))
    if static_batch:
        program = torch.export.export(module, (torch.zeros(1, FEATURES),))
    else:
        batch = torch.export.Dim("batch")
        program = torch.export.export(
            module, (torch.zeros(4, FEATURES),), dynamic_shapes={"input": {0: batch}}
        )
    path = _directory(directory) / "model.pt2"
    torch.export.save(program, str(path))
    return path


def build_torchscript_mlp(
    directory: Path | str, *, hidden: int = 16, seed: int = 0, file_name: str = "model.pt"
) -> Path:
    """The breast-cancer MLP as TorchScript (``torch.jit.trace``): ``model.pt`` (or ``model.ts``)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still widely served
        module = _torch_mlp(mlp_weights(hidden, seed))
        traced = torch.jit.trace(module, torch.zeros(4, FEATURES), strict=False)  # type: ignore[no-untyped-call]
        path = _directory(directory) / file_name
        torch.jit.save(traced, str(path))
    return path


def build_torch_token_classifier(
    directory: Path | str, *, vocab: int = 32, dim: int = 8, classes: int = 3, seq: int = 6, seed: int = 0
) -> Path:
    """The token classifier of :func:`build_onnx_token_classifier` as a dynamic-batch ``model.pt2``."""
    import torch

    weights = token_classifier_weights(vocab, dim, classes, seed)

    class TokenClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab, dim)
            self.head = torch.nn.Linear(dim, classes)
            with torch.no_grad():
                self.embedding.weight.copy_(torch.from_numpy(weights.embedding.copy()))
                self.head.weight.copy_(torch.from_numpy(weights.weight.T.copy()))
                self.head.bias.copy_(torch.from_numpy(weights.bias.copy()))

        def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.head(self.embedding(tokens).mean(dim=1))
            return {"logits": logits, "probability": torch.softmax(logits, dim=-1)}

    program = torch.export.export(
        TokenClassifier().eval(),
        (torch.zeros(4, seq, dtype=torch.int64),),
        dynamic_shapes={"tokens": {0: torch.export.Dim("batch")}},
    )
    path = _directory(directory) / "model.pt2"
    torch.export.save(program, str(path))
    return path


def build_jax_mlp(
    directory: Path | str,
    *,
    static_batch: bool = False,
    platforms: tuple[str, ...] = ("cpu",),
    hidden: int = 16,
    seed: int = 0,
) -> Path:
    """The breast-cancer MLP serialised with ``jax.export``: ``model.jax`` (StableHLO, no Python code).

    The batch dimension is symbolic unless ``static_batch``; ``platforms`` lists where it may run
    (add ``"cuda"`` to serve it on a GPU).
    """
    import jax
    import jax.numpy as jnp
    from jax import export

    weights = mlp_weights(hidden, seed)

    def probability(x: Any) -> dict[str, Any]:
        scaled = (x - weights.mean) / weights.scale
        hidden_units = jax.nn.relu(scaled @ weights.w1 + weights.b1)
        return {"probability": jax.nn.sigmoid(hidden_units @ weights.w2 + weights.b2)[:, 0]}

    rows: Any = 1 if static_batch else export.symbolic_shape("batch")[0]
    exported = export.export(jax.jit(probability), platforms=platforms)(
        jax.ShapeDtypeStruct((rows, FEATURES), jnp.float32)  # type: ignore[no-untyped-call]
    )
    path = _directory(directory) / "model.jax"
    path.write_bytes(exported.serialize())
    return path


class NumpyMLPHandler:
    """A handler for the ``python`` runtime (installed code): the breast-cancer MLP in numpy.

    It reads ``weights.npz`` (written by :func:`build_python_handler`) without unpickling, and
    refuses rows with non-finite values, naming them.
    """

    def load(self, directory: Path, options: Mapping[str, Any]) -> None:
        with np.load(directory / "weights.npz", allow_pickle=False) as data:
            self.weights = MLPWeights(**{name: data[name] for name in data.files})
        self.input_name = str(options.get("input_name", "input"))

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec(self.input_name, "FP32", (-1, FEATURES)),),
            outputs=(TensorSpec("probability", "FP32", (-1,)),),
        )

    def predict(self, batch: Batch) -> Arrays:
        features = batch.inputs[self.input_name]
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise InvalidInputError(
                f"expected {FEATURES} features per row, got shape {list(features.shape)}",
                input=self.input_name,
            )
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)[:10].tolist()
            raise InvalidInputError(f"rows {rows} hold NaN or infinite values", input=self.input_name)
        return {"probability": self.weights.probability(features)}

    def memory_bytes(self) -> int:
        return sum(array.nbytes for array in self.weights.arrays().values())


_HANDLER_SOURCE = '''\
"""A model-directory handler: doubles its input (served only with trust_code)."""

import numpy as np


class Handler:
    def load(self, directory, options):
        self.factor = float(options.get("factor", 2.0))

    def predict(self, batch):
        return {"output": np.asarray(batch.inputs["input"], dtype=np.float32) * self.factor}
'''


def build_python_handler(
    directory: Path | str, *, handler_file: bool = False, hidden: int = 16, seed: int = 0
) -> Path:
    """Files for the ``python`` runtime: ``weights.npz`` for :class:`NumpyMLPHandler`, and with
    ``handler_file`` also a ``handler.py`` (code in the model directory, served only with trust_code).

    Returns the version directory.
    """
    path = _directory(directory)
    arrays: dict[str, Any] = dict(mlp_weights(hidden, seed).arrays())
    np.savez(path / "weights.npz", **arrays)
    if handler_file:
        (path / "handler.py").write_text(textwrap.dedent(_HANDLER_SOURCE))
    return path
