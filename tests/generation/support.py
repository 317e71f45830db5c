"""Helpers of the generation tests: loading tiny runtimes, running sequences alone, comparing greedy runs."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import numpy as np
import torch

from ladle.generation import GenerationChunk, SamplingParams
from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions
from ladle.plugins.runtimes.causal_lm.model import Prefill, StepInputs
from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
from ladle.runtime import RuntimeSpec

#: Tokens whose reference top-2 logit margin is below this may legitimately differ (float rounding).
MARGIN = 1e-6
P = ParamSpec("P")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def write_draft(
    target: Path, directory: Path, *, noise: float, layers: int | None = None, seed: int = 0
) -> Path:
    """A draft checkpoint for ``target``: its tokenizer, its weights plus Gaussian noise (``noise``
    times each tensor's spread) and only its first ``layers`` layers, so it proposes the target's
    tokens often but not always."""
    from safetensors.numpy import load_file, save_file

    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(target / name, directory / name)
    config = json.loads((target / "config.json").read_text())
    key = "n_layer" if config["model_type"] == "gpt2" else "num_hidden_layers"
    kept = layers if layers is not None else config[key]
    config[key] = kept
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    weights = {}
    for name, value in load_file(str(target / "model.safetensors")).items():
        parts = name.split(".")
        layer = next(
            (int(parts[i + 1]) for i, part in enumerate(parts[:-1]) if part in ("layers", "h")), None
        )
        if layer is not None and layer >= kept:
            continue
        weights[name] = (value + rng.normal(0.0, noise, value.shape) * value.std()).astype(value.dtype)
    save_file(weights, str(directory / "model.safetensors"))
    return directory


def draft_option(directory: Path, num_tokens: int = 4, **options: Any) -> dict[str, Any]:
    """The ``speculative`` runtime option the core resolves from a model's ``speculative`` table."""
    options.setdefault("dtype", "float64")
    return {"draft": directory.name, "artifact": str(directory), "num_tokens": num_tokens, "options": options}


def load_runtime(directory: Path, *, device: str = "cpu", **options: Any) -> CausalLMRuntime:
    options.setdefault("dtype", "float64")
    options.setdefault("kv_cache_bytes", 4 << 20)
    options = {key: value for key, value in options.items() if value is not None}  # None: the default
    runtime = CausalLMRuntime(
        RuntimeSpec("causal-lm", str(directory), device=device, threads=1, options=options)
    )
    runtime.load()
    return runtime


class Collector:
    """A sink that records what one sequence streamed."""

    def __init__(self) -> None:
        self.chunks: list[GenerationChunk] = []
        self.error: BaseException | None = None

    def __call__(self, event: GenerationChunk | BaseException) -> None:
        if isinstance(event, BaseException):
            self.error = event
        else:
            self.chunks.append(event)

    @property
    def tokens(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk.token_ids]

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)

    @property
    def finish_reason(self) -> str | None:
        return self.chunks[-1].finish_reason if self.chunks else None


def generate_alone(runtime: CausalLMRuntime, prompt: Sequence[int], params: SamplingParams) -> list[int]:
    """Greedy-generate one sequence with nothing else in the engine (the reference for batching tests)."""
    core = EngineCore(runtime, EngineOptions(prefix_caching=False))
    sink = Collector()
    core.add(core.new_sequence(prompt, params, sink))
    core.run_until_done()
    assert sink.error is None, sink.error
    return sink.tokens


def logits(runtime: CausalLMRuntime, prompt: Sequence[int], generated: Sequence[int]) -> torch.Tensor:
    """The logits that predicted each generated token, from one full forward pass of the model."""
    model = runtime.model
    assert model is not None
    tokens = [*prompt, *generated][:-1] if generated else list(prompt)
    n = len(tokens)
    saved_k, saved_v = model.k_cache, model.v_cache
    model.allocate_cache(-(-n // model.block_size), model.block_size)
    try:
        device = model.device
        inputs = StepInputs(
            torch.tensor(tokens, device=device),
            torch.arange(n, device=device),
            torch.arange(n, device=device),
            torch.arange(len(prompt) - 1, n, device=device),
            prefills=[Prefill(0, n, 0, None, None)],
        )
        with torch.inference_mode():
            return model.forward(inputs)
    finally:
        model.k_cache, model.v_cache = saved_k, saved_v


def margins(runtime: CausalLMRuntime, prompt: Sequence[int], generated: Sequence[int]) -> list[float]:
    """Top-2 logit margin at each generated position."""
    top = logits(runtime, prompt, generated).topk(2, dim=-1).values
    result: list[float] = (top[:, 0] - top[:, 1]).tolist()
    return result


def assert_same_greedy(expected: Sequence[int], actual: Sequence[int], margin: Sequence[float]) -> None:
    """Equal token for token up to the first position whose reference margin is within ``MARGIN``."""
    assert len(margin) >= len(expected)
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if margin[index] <= MARGIN:
            return
        assert want == got, f"token {index} differs: {got} instead of {want} (margin {margin[index]:.3g})"
    assert len(actual) == len(expected), f"{len(actual)} tokens instead of {len(expected)}"


def run_async(test: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test function on a fresh event loop, with a time limit so nothing can hang."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def limited() -> None:
            await asyncio.wait_for(test(*args, **kwargs), 60)

        asyncio.run(limited())

    return wrapper
