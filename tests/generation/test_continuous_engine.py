"""The continuous-batching engine core, stepped by hand: batched greedy output equals each sequence alone.

Every scenario (mixed lengths joining at different steps, chunked prefill, preemption forced by a tiny
block pool, shared prefixes, one slot per sequence) runs on a float64 model, and ends with every block
back in the pool.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ladle.envelope import Priority
from ladle.errors import DeadlineExceededError, InvalidRequestError, RuntimeFailureError
from ladle.generation import SamplingParams, StepItem
from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions
from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime

from .support import Collector, assert_same_greedy, generate_alone, load_runtime, margins

Workload = list[tuple[list[int], int, int]]  # (prompt, max_tokens, step at which it joins)


def workload(
    vocab: int, count: int, seed: int, *, prefix: Sequence[int] = (), longest: int = 120
) -> Workload:
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        prompt = [*prefix, *(rng.randrange(5, vocab) for _ in range(rng.randint(1, longest)))]
        jobs.append((prompt, rng.randint(1, 40), rng.choice([0, 0, 1, 3, 7, 12])))
    return jobs


def run_batched(core: EngineCore, jobs: Workload) -> list[Collector]:
    """Add each job at its step, step until all are done, return what each streamed."""
    sinks = [Collector() for _ in jobs]
    pending = sorted(range(len(jobs)), key=lambda i: jobs[i][2])
    step = 0
    while pending or core.has_work:
        while pending and jobs[pending[0]][2] <= step:
            index = pending.pop(0)
            prompt, max_tokens, _ = jobs[index]
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            core.add(core.new_sequence(prompt, params, sinks[index]))
        for sink, event in core.step():
            sink(event)
        step += 1
        assert step < 10_000
    return sinks


def check_against_alone(runtime: CausalLMRuntime, core: EngineCore, jobs: Workload) -> None:
    sinks = run_batched(core, jobs)
    for (prompt, max_tokens, _), sink in zip(jobs, sinks, strict=True):
        assert sink.error is None
        alone = generate_alone(runtime, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        assert len(alone) == max_tokens
        assert_same_greedy(alone, sink.tokens, margins(runtime, prompt, alone))
        assert sink.finish_reason == "length"
        assert sink.chunks[-1].usage.prompt_tokens == len(prompt)
        assert sink.chunks[-1].usage.completion_tokens == max_tokens
    assert_pool_empty(core)


def assert_pool_empty(core: EngineCore) -> None:
    pool = core.kv.pool
    assert pool.used_blocks == 0 and pool.free_blocks == pool.num_blocks
    assert len(core.kv) == 0 and not core.has_work and len(core) == 0


@pytest.mark.parametrize("checkpoint", ["llama_dir", "gpt2_dir"])
def test_mixed_lengths_joining_at_different_steps(checkpoint: str, request: pytest.FixtureRequest) -> None:
    runtime = load_runtime(request.getfixturevalue(checkpoint))
    core = EngineCore(runtime, EngineOptions(max_num_seqs=6, max_batched_tokens=96))
    check_against_alone(runtime, core, workload(runtime.tokenizer.vocab_size, 10, seed=1))
    assert core.stats.steps < sum(m for _, m, _ in workload(runtime.tokenizer.vocab_size, 10, seed=1))


def test_long_prompts_are_prefilled_in_chunks(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime, EngineOptions(max_batched_tokens=8))
    jobs = workload(runtime.tokenizer.vocab_size, 4, seed=2, longest=100)
    check_against_alone(runtime, core, jobs)
    longest = max(len(p) for p, _, _ in jobs)
    assert core.stats.steps >= longest // 8


def test_a_tiny_block_pool_forces_preemption_and_recomputation(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir, kv_cache_bytes=17 * 16 * 1024)  # 17 blocks: one 256-token sequence
    assert runtime.cache_spec().num_blocks == 17
    core = EngineCore(runtime, EngineOptions(max_batched_tokens=64, watermark=0.0))
    jobs = [(p, 40, join) for p, _, join in workload(runtime.tokenizer.vocab_size, 8, seed=3, longest=60)]
    check_against_alone(runtime, core, jobs)
    assert core.stats.preemptions > 0


def test_a_shared_system_prompt_is_computed_once(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime, EngineOptions())
    system = runtime.tokenizer.encode("You are a helpful assistant. Answer briefly and politely. " * 3)
    jobs = workload(runtime.tokenizer.vocab_size, 6, seed=4, prefix=system, longest=10)
    jobs = [(prompt, max_tokens, 0 if i == 0 else 2 + i) for i, (prompt, max_tokens, _) in enumerate(jobs)]
    jobs.append((jobs[0][0], 7, 9))  # a repeat of a whole prompt: its last block is copied, not recomputed
    check_against_alone(runtime, core, jobs)
    full_blocks = len(system) // 16 * 16
    assert core.stats.cached_prompt_tokens >= (len(jobs) - 1) * full_blocks
    assert core.stats.prefill_tokens < sum(len(p) for p, _, _ in jobs) - (len(jobs) - 1) * full_blocks + 1


def test_a_repeated_block_aligned_prompt_copies_its_last_block_instead_of_recomputing_it(
    llama_dir: Path,
) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime, EngineOptions())
    prompt = runtime.tokenizer.encode(
        "Paged attention keeps the key and value cache in fixed-size blocks. " * 3
    )[:32]
    other = [*prompt[:16], *prompt[16:][::-1]]  # shares the first block only
    jobs = [(prompt, 12, 0), (other, 12, 1), (prompt, 12, 4), (prompt, 5, 4)]
    check_against_alone(runtime, core, jobs)
    assert core.stats.cached_prompt_tokens == 16 + 31 + 31
    assert core.stats.prefill_tokens == 32 + 16 + 1 + 1


def test_one_slot_per_sequence_for_a_runtime_that_cannot_page(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir, paged=False, max_model_len=160, kv_cache_bytes=3 * 160 * 1024)
    spec = runtime.cache_spec()
    assert not spec.paged and spec.num_blocks == 3
    core = EngineCore(runtime, EngineOptions(max_batched_tokens=64))
    assert not core.kv.prefix_caching
    check_against_alone(runtime, core, workload(runtime.tokenizer.vocab_size, 6, seed=5, longest=80))


def test_priority_classes_are_served_first_and_preempt_lower_ones(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime, EngineOptions(max_num_seqs=1))
    finished: list[str] = []
    sinks = {name: Collector() for name in ("low", "normal", "high")}
    prompts = {name: runtime.tokenizer.encode(f"a {name} priority request") for name in sinks}

    def add(name: str, priority: Priority) -> None:
        params = SamplingParams(max_tokens=12, ignore_eos=True)
        core.add(core.new_sequence(prompts[name], params, sinks[name], priority=priority))

    add("low", Priority.LOW)
    for _ in range(3):
        for sink, event in core.step():
            sink(event)
    add("normal", Priority.NORMAL)
    add("high", Priority.HIGH)
    while core.has_work:
        for sink, event in core.step():
            sink(event)
            if sink.finish_reason is not None:  # type: ignore[attr-defined]
                finished.append(next(n for n, s in sinks.items() if s is sink))
    assert finished == ["high", "normal", "low"]
    assert core.stats.preemptions == 1
    low = generate_alone(runtime, prompts["low"], SamplingParams(max_tokens=12, ignore_eos=True))
    assert_same_greedy(low, sinks["low"].tokens, margins(runtime, prompts["low"], low))
    assert_pool_empty(core)


def generate(core: EngineCore, prompt: Sequence[int], params: SamplingParams) -> Collector:
    sink = Collector()
    core.add(core.new_sequence(prompt, params, sink))
    core.run_until_done()
    return sink


def test_stop_strings_stop_tokens_and_lengths(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime)
    prompt = runtime.tokenizer.encode("Numbers like 12, 345 and 6789 appear")
    free = generate(core, prompt, SamplingParams(max_tokens=30, ignore_eos=True))
    assert free.finish_reason == "length" and len(free.tokens) == 30
    assert free.text == runtime.tokenizer.decode(free.tokens)

    stop = free.text[10:13]
    cut = free.text.index(stop)
    stopped = generate(core, prompt, SamplingParams(max_tokens=30, ignore_eos=True, stop=(stop, "never")))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:cut]
    assert stopped.tokens == free.tokens[: len(stopped.tokens)] and len(stopped.tokens) < 30
    for chunk in stopped.chunks[:-1]:  # nothing of the stop string is streamed before it completes
        assert stop not in chunk.text

    token = free.tokens[5]
    by_token = generate(core, prompt, SamplingParams(max_tokens=30, stop_token_ids=(token,)))
    assert by_token.finish_reason == "stop" and by_token.tokens == free.tokens[: free.tokens.index(token) + 1]

    eos = next(iter(runtime.tokenizer.eos_token_ids))
    assert generate(core, [*prompt, eos], SamplingParams(max_tokens=3, stop_token_ids=())).finish_reason in (
        "stop",
        "length",
    )

    near_end = [5] * 250  # the context holds 256: six tokens are left
    full = generate(core, near_end, SamplingParams(ignore_eos=True))
    assert full.finish_reason == "length" and len(full.tokens) == 6
    assert_pool_empty(core)


def test_bad_requests_are_refused_before_they_are_queued(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime)
    sink = Collector()
    cases = [
        ([5] * 256, SamplingParams(), "prompt"),
        ([5] * 300, SamplingParams(), "prompt"),
        ([5] * 200, SamplingParams(max_tokens=57), "max_tokens"),
        ([], SamplingParams(), "prompt"),
        ([5, 100_000], SamplingParams(), "prompt"),
        ([5, -1], SamplingParams(), "prompt"),
    ]
    for prompt, params, param in cases:
        with pytest.raises(InvalidRequestError) as caught:
            core.new_sequence(prompt, params, sink)
        assert caught.value.status == 400 and caught.value.details["param"] == param
    assert len(core.new_sequence([5] * 200, SamplingParams(max_tokens=56), sink).tokens) == 200
    assert not core.has_work


def test_an_aborted_sequence_frees_its_blocks_and_the_others_go_on(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime)
    sinks = [Collector() for _ in range(3)]
    seqs = [
        core.new_sequence([5 + i] * 40, SamplingParams(max_tokens=20, ignore_eos=True), sink)
        for i, sink in enumerate(sinks)
    ]
    for seq in seqs:
        core.add(seq)
    for _ in range(3):
        for sink, event in core.step():
            sink(event)
    used = core.kv.pool.used_blocks
    assert core.abort(seqs[0].id) is seqs[0]
    assert core.kv.pool.used_blocks == used - 3
    assert core.abort(seqs[0].id) is None
    core.run_until_done()
    assert sinks[1].finish_reason == sinks[2].finish_reason == "length"
    assert core.stats.aborted == 1
    assert_pool_empty(core)


def test_a_passed_deadline_ends_the_request(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    core = EngineCore(runtime)
    late, on_time = Collector(), Collector()
    core.add(
        core.new_sequence([5] * 10, SamplingParams(max_tokens=50), late, deadline=time.monotonic() + 0.05)
    )
    core.add(core.new_sequence([6] * 10, SamplingParams(max_tokens=5, ignore_eos=True), on_time))
    core.step()
    time.sleep(0.06)
    core.run_until_done()
    assert isinstance(late.error, DeadlineExceededError) and late.error.status == 504
    assert on_time.finish_reason == "length"
    assert_pool_empty(core)


class FailingOnce(CausalLMRuntime):
    failures = 1

    def step(self, items: Sequence[StepItem], copies: Sequence[tuple[int, int]] = ()) -> list[list[int]]:
        if self.failures:
            self.failures -= 1
            raise ValueError("device lost")
        return super().step(items, copies)


def test_a_runtime_failure_fails_the_step_s_requests_only(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    runtime.__class__ = FailingOnce
    core = EngineCore(runtime)
    first = generate(core, [5] * 10, SamplingParams(max_tokens=4))
    assert isinstance(first.error, RuntimeFailureError) and "device lost" in first.error.message
    second = generate(core, [5] * 10, SamplingParams(max_tokens=4, ignore_eos=True))
    assert second.error is None and len(second.tokens) == 4
    assert_pool_empty(core)
