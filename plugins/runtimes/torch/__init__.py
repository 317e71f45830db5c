"""PyTorch runtime plugin: serves a ``torch.export`` program (``model.pt2``) or TorchScript
(``model.pt`` / ``model.ts``)."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl

ARTIFACTS = ("model.pt2", "model.pt", "model.ts")


def detect(directory: Path) -> bool:
    """``model.pt2``, ``model.pt`` or ``model.ts`` in the version directory."""
    return any((directory / name).is_file() for name in ARTIFACTS)


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "torch",
        "ladle.plugins.runtimes.torch.runtime:TorchRuntime",
        requires=["torch"],
        extra="torch",
        detect=detect,
        description="torch.export program (.pt2) or TorchScript (.pt/.ts); "
        "a static-batch program is served in slices of its batch size",
    )
