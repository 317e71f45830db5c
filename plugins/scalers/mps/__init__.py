"""MPS scaler plugin: a placement that packs GPU instances onto this machine's GPUs under NVIDIA MPS."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_placements(register: Register) -> None:
    register(
        "mps",
        "ladle.plugins.scalers.mps.placement:MpsPlacement",
        description="GPU instances packed first-fit-decreasing on memory, one worker process each, "
        "with per-instance SM shares and memory limits under NVIDIA MPS (time-sliced without it)",
    )
