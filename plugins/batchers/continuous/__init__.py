"""Continuous batching plugin: sequences join and leave the running batch at every step of a
step-able runtime (``ladle.generation.StepRuntime``), over a paged KV cache."""

from __future__ import annotations

from ladle import hookimpl


@hookimpl
def register_batchers(register):  # type: ignore[no-untyped-def]
    register(
        "continuous",
        "ladle.plugins.batchers.continuous.batcher:ContinuousBatcher",
        description="iteration-level batching of generative runtimes: chunked prefill, preemption, streaming",
    )
