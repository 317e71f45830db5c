"""The step-able runtime conformance kit: what every runtime a continuous batcher drives must do.

Subclass :class:`StepRuntimeConformance` and write the model::

    from ladle.testing.step_kit import StepRuntimeConformance

    class TestMyLM(StepRuntimeConformance):
        def make_spec(self, directory):
            write_my_checkpoint(directory)
            return RuntimeSpec(plugin="my-lm", artifact=str(directory))

The checks drive the runtime directly through ``ladle.StepRuntime``'s contract, with block tables
the kit allocates: the cache it declares is usable, a step returns one list per item (a token
exactly where ``sample`` is set, in the vocabulary), greedy tokens do not depend on what shares
the step (alone, beside another sequence, after a chunked prefill), a released sequence leaves no
trace, and its tokenizer encodes and decodes text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from ..executors import build_runtime
from ..generation import SamplingParams, StepItem, StepRuntime
from ..plugin_host import PluginHost
from ..runtime import RuntimeSpec

__all__ = ["StepRuntimeConformance", "greedy_tokens"]

GREEDY = SamplingParams(temperature=0.0)


class _Blocks:
    """Hands out disjoint block tables from the runtime's declared cache."""

    def __init__(self, runtime: StepRuntime) -> None:
        self.spec = runtime.cache_spec()
        self.next = 0

    def table(self, tokens: int) -> list[int]:
        count = max(1, math.ceil(tokens / self.spec.block_size)) if self.spec.paged else 1
        if self.next + count > self.spec.num_blocks:
            raise AssertionError("the kit ran out of cache blocks; declare a larger cache")
        table = list(range(self.next, self.next + count))
        self.next += count
        return table


def greedy_tokens(
    runtime: StepRuntime,
    prompts: Sequence[Sequence[int]],
    steps: int,
    *,
    chunk: int | None = None,
    first_id: int = 0,
) -> list[list[int]]:
    """Greedy-decode ``prompts`` together for ``steps`` tokens each (prefill in ``chunk``-token
    pieces when given), through ``StepRuntime.step`` alone."""
    blocks = _Blocks(runtime)
    ids = [first_id + i for i in range(len(prompts))]
    tables = [blocks.table(len(p) + steps) for p in prompts]
    for seq_id in ids:
        runtime.add_sequence(seq_id, GREEDY)
    fed = [0] * len(prompts)
    generated: list[list[int]] = [[] for _ in prompts]
    try:
        while any(len(g) < steps for g in generated):
            items = []
            for i, prompt in enumerate(prompts):
                if len(generated[i]) >= steps:
                    continue
                if fed[i] < len(prompt):
                    end = len(prompt) if chunk is None else min(len(prompt), fed[i] + chunk)
                    tokens, start = list(prompt[fed[i] : end]), fed[i]
                    sample = end == len(prompt)
                    fed[i] = end
                else:
                    tokens, start, sample = [generated[i][-1]], len(prompt) + len(generated[i]) - 1, True
                items.append(
                    (i, StepItem(ids[i], tokens, start, tables[i], sample, GREEDY, 0, len(generated[i])))
                )
            outputs = runtime.step([item for _, item in items])
            assert len(outputs) == len(items), f"{len(outputs)} results for {len(items)} items"
            for (i, item), produced in zip(items, outputs, strict=True):
                if item.sample:
                    assert len(produced) >= 1, "a sampled item produced no token"
                    generated[i].append(produced[0])
                else:
                    assert produced == [], "an item without sample produced tokens"
    finally:
        for seq_id in ids:
            runtime.release_sequence(seq_id)
    return generated


class StepRuntimeConformance:
    """Checks for one step-able runtime; override ``make_spec`` (and ``prompts`` if you like)."""

    steps: ClassVar[int] = 6

    def make_spec(self, directory: Path) -> RuntimeSpec:
        raise NotImplementedError

    def plugin_host(self) -> PluginHost:
        return PluginHost().discover()

    def prompts(self, runtime: StepRuntime) -> list[list[int]]:
        tokenizer = runtime.tokenizer
        return [
            tokenizer.encode(text) for text in ("the quick brown fox", "once upon a time there was", "hello")
        ]

    @pytest.fixture(scope="class")
    @classmethod
    def step_runtime(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepRuntime]:
        kit = cls()
        spec = kit.make_spec(tmp_path_factory.mktemp("step-kit"))
        runtime = build_runtime(spec, kit.plugin_host())
        assert isinstance(runtime, StepRuntime), f"{type(runtime).__name__} is not a ladle.StepRuntime"
        runtime.load()
        try:
            yield runtime
        finally:
            runtime.unload()

    def test_the_cache_it_declares_holds_a_sequence(self, step_runtime: StepRuntime) -> None:
        spec = step_runtime.cache_spec()
        assert spec.num_blocks * spec.block_size >= spec.max_model_len or not spec.paged
        assert spec.bytes_per_token > 0

    def test_steps_answer_each_item_with_tokens_of_the_vocabulary(self, step_runtime: StepRuntime) -> None:
        vocabulary = step_runtime.tokenizer.vocab_size
        for tokens in greedy_tokens(step_runtime, self.prompts(step_runtime), self.steps):
            assert len(tokens) == self.steps and all(0 <= t < vocabulary for t in tokens)

    def test_greedy_tokens_do_not_depend_on_the_company(self, step_runtime: StepRuntime) -> None:
        prompts = self.prompts(step_runtime)
        together = greedy_tokens(step_runtime, prompts, self.steps)
        alone = [greedy_tokens(step_runtime, [p], self.steps, first_id=10)[0] for p in prompts]
        chunked = greedy_tokens(step_runtime, prompts, self.steps, chunk=2, first_id=20)
        assert together == alone, "a sequence's greedy tokens changed with what shared its steps"
        assert chunked == alone, "a chunked prefill changed the greedy tokens"

    def test_a_released_sequence_leaves_no_trace(self, step_runtime: StepRuntime) -> None:
        prompt = self.prompts(step_runtime)[0]
        first = greedy_tokens(step_runtime, [prompt], self.steps, first_id=30)
        again = greedy_tokens(step_runtime, [prompt], self.steps, first_id=30)  # the same id, reused
        assert first == again

    def test_its_tokenizer_round_trips_text(self, step_runtime: StepRuntime) -> None:
        tokenizer = step_runtime.tokenizer
        text = "the quick brown fox"
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)).strip() == text
        assert isinstance(tokenizer.eos_token_ids, frozenset)
