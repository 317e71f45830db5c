"""ONNX runtime plugin: serves ``model.onnx`` with onnxruntime."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

ARTIFACT = "model.onnx"


def detect(directory: Path) -> bool:
    """A ``model.onnx`` file in the version directory."""
    return (directory / ARTIFACT).is_file()


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "onnx",
        "ladle.plugins.runtimes.onnx.runtime:OnnxRuntime",
        requires=["onnxruntime"],
        extra="onnx",
        detect=detect,
        description="ONNX model on onnxruntime; ordered execution providers, the active ones reported",
    )
