"""``ladle demo``: build two small models (XGBoost and ONNX, on scikit-learn's breast-cancer data) into
a model repository on first run, then serve it on the embedded defaults."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import serve

DEFAULT_DIR = Path(".ladle-demo")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the demo repository is built")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--build-only", action="store_true", help="build the models and exit")


def build(directory: Path) -> Path:
    """Build the demo repository (once) and return its path."""
    from ..testing import models

    repository = directory / "models"
    xgb_dir = repository / "breast_cancer" / "1"
    onnx_dir = repository / "breast_cancer_onnx" / "1"
    if not (xgb_dir / "model.ubj").is_file():
        print("building breast_cancer (XGBoost, 200 trees of depth 6) ...", file=sys.stderr)
        models.build_xgboost(xgb_dir, n_estimators=200, max_depth=6, file_name="model.ubj")
    if not (onnx_dir / "model.onnx").is_file():
        print("building breast_cancer_onnx (ONNX MLP) ...", file=sys.stderr)
        models.build_onnx_mlp(onnx_dir)
    return repository


def curl_example(host: str, port: int) -> str:
    from sklearn.datasets import load_breast_cancer

    row = ",".join(f"{v:g}" for v in load_breast_cancer().data[0])
    body = f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,30],"data":[{row}]}}]}}'
    return (
        f"curl -s -X POST http://{host}:{port}/v2/models/breast_cancer/infer "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )


def run(args: argparse.Namespace) -> int:
    repository = build(args.dir)
    if args.build_only:
        print(repository)
        return 0
    print("\nTry it (in another terminal):\n", file=sys.stderr)
    print(curl_example(args.host, args.port), file=sys.stderr)
    print(
        f"curl -s http://{args.host}:{args.port}/v2/models/breast_cancer_onnx\n",
        file=sys.stderr,
    )
    # serve's own parser: the demo gets every serve option's default, as `ladle serve` would
    options = argparse.ArgumentParser(prog="ladle serve")
    serve.configure(options)
    return serve.run(options.parse_args([str(repository), "--host", args.host, "--port", str(args.port)]))
