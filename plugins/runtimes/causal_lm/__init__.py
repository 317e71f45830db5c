"""Causal-LM runtime plugin: Llama-style and GPT-2 checkpoints (config.json, *.safetensors,
tokenizer.json) served step by step over a paged KV cache, for the continuous batcher."""

from __future__ import annotations

from pathlib import Path

from ladle import hookimpl


def detect(directory: Path) -> bool:
    """A Hugging Face-style checkpoint: ``config.json``, ``tokenizer.json`` and safetensors weights."""
    return (
        (directory / "config.json").is_file()
        and (directory / "tokenizer.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


@hookimpl
def register_runtimes(register):  # type: ignore[no-untyped-def]
    register(
        "causal-lm",
        "ladle.plugins.runtimes.causal_lm.runtime:CausalLMRuntime",
        requires=["torch", "safetensors", "tokenizers"],
        extra="llm",
        detect=detect,
        capabilities={"steps": True, "preferred_batcher": "continuous"},
        description="Llama-style and GPT-2 text generation over a paged KV cache (with batcher 'continuous')",
    )
