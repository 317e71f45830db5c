"""Speculative decoding: a draft model proposes, the target verifies in the same step.

Greedy output with a draft is the target's own greedy output (float64 models, drafts that are right
about half the time and mostly wrong, so both acceptance and rejection run), whatever the batch,
chunking, preemption or prefix sharing; sampled output keeps the target's distribution (checked on
the accept/reject rule alone over a five-token vocabulary, and through the runtime).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from ladle.errors import ConfigError
from ladle.generation import SamplingParams, StepItem
from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions
from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
from ladle.plugins.runtimes.causal_lm.sampling import (
    DRAFT_STREAM,
    accept_greedy,
    accept_sampled,
    draw,
    mix,
    probabilities,
)
from ladle.testing.lm import llama_config, write_checkpoint

from .support import (
    Collector,
    assert_same_greedy,
    draft_option,
    generate_alone,
    load_runtime,
    logits,
    margins,
    write_draft,
)
from .test_continuous_engine import Workload, assert_pool_empty, run_batched, workload


def chi2_limit(df: int) -> float:
    """The 99.99th percentile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty): with
    fixed seeds a test against it fails only on a real difference of distributions."""
    z = 3.719
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: Counter[int], expected: dict[int, float], total: int) -> float:
    """Pearson's statistic of ``counts`` against probabilities ``expected`` (every key of ``counts``
    must have one)."""
    assert set(counts) <= set(expected), (counts, expected)
    return sum((counts.get(k, 0) - total * p) ** 2 / (total * p) for k, p in expected.items() if p > 0)


def speculative(directory: Path, draft: Path, num_tokens: int = 4, **options: object) -> CausalLMRuntime:
    return load_runtime(directory, speculative=draft_option(draft, num_tokens), **options)  # type: ignore[arg-type]


def check_greedy_equals_plain(
    plain: CausalLMRuntime, core: EngineCore, jobs: Workload, *, params: dict[str, object] | None = None
) -> list[Collector]:
    sinks = run_batched(core, jobs)
    for (prompt, max_tokens, _), sink in zip(jobs, sinks, strict=True):
        assert sink.error is None, sink.error
        expected = generate_alone(plain, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        assert_same_greedy(expected, sink.tokens, margins(plain, prompt, expected))
        assert sink.finish_reason == "length"
        assert sink.chunks[-1].usage.completion_tokens == max_tokens
    assert_pool_empty(core)
    return sinks


@pytest.mark.parametrize(
    ("checkpoint", "draft"),
    [("llama_dir", "llama_draft"), ("llama_dir", "llama_shallow_draft"), ("gpt2_dir", "gpt2_draft")],
)
def test_greedy_output_with_a_draft_is_the_target_s_own(
    checkpoint: str, draft: str, request: pytest.FixtureRequest
) -> None:
    directory: Path = request.getfixturevalue(checkpoint)
    plain = load_runtime(directory)
    runtime = speculative(directory, request.getfixturevalue(draft))
    assert runtime.speculative_tokens() == 4
    core = EngineCore(runtime, EngineOptions(max_num_seqs=6, max_batched_tokens=96))
    jobs = [(p, m + 10, j) for p, m, j in workload(plain.tokenizer.vocab_size, 10, seed=1)]
    check_greedy_equals_plain(plain, core, jobs)
    stats = core.stats.to_dict()
    assert stats["draft_proposed"] > 0
    assert 0 < stats["draft_accepted"] < stats["draft_proposed"]  # both outcomes were exercised
    if draft == "llama_draft":  # right about half the time
        assert stats["draft_acceptance"] > 0.3


def test_an_identical_draft_is_always_accepted_and_saves_steps(llama_dir: Path, tmp_path: Path) -> None:
    plain = load_runtime(llama_dir)
    runtime = speculative(llama_dir, write_draft(llama_dir, tmp_path / "same", noise=0.0), num_tokens=3)
    core = EngineCore(runtime, EngineOptions(prefix_caching=False))
    prompt = plain.tokenizer.encode("Hello, world! How are you today?")
    jobs: Workload = [(prompt, 33, 0)]
    check_greedy_equals_plain(plain, core, jobs)
    # one prefill step gives the first token; every later step four (three drafts and a bonus)
    assert core.stats.draft_accepted == core.stats.draft_proposed == 24 and core.stats.steps == 9


def test_preemption_chunked_prefill_and_shared_prefixes_with_a_draft(
    llama_dir: Path, llama_draft: Path
) -> None:
    plain = load_runtime(llama_dir)
    # 17 blocks of 16 tokens, each token holding the target's and the draft's K/V (2 x 1024 bytes)
    runtime = speculative(llama_dir, llama_draft, kv_cache_bytes=17 * 16 * 2048)
    assert runtime.cache_spec().num_blocks == 17 and runtime.cache_spec().bytes_per_token == 2048
    core = EngineCore(runtime, EngineOptions(max_batched_tokens=24, watermark=0.0))
    system = plain.tokenizer.encode("You are a helpful assistant. Answer briefly and politely. " * 2)
    jobs = [
        (p, 40, j) for p, _, j in workload(plain.tokenizer.vocab_size, 8, seed=3, prefix=system, longest=30)
    ]
    check_greedy_equals_plain(plain, core, jobs)
    assert core.stats.preemptions > 0 and core.stats.cached_prompt_tokens > 0
    assert core.stats.draft_accepted > 0


def test_stops_inside_accepted_drafts_and_the_end_of_the_context(llama_dir: Path, tmp_path: Path) -> None:
    plain = load_runtime(llama_dir)
    runtime = speculative(llama_dir, write_draft(llama_dir, tmp_path / "same", noise=0.0))
    prompt = plain.tokenizer.encode("Numbers like 12, 345 and 6789 appear")
    free = generate_alone(plain, prompt, SamplingParams(max_tokens=30, ignore_eos=True))
    token = free[6]  # the seventh token: decided inside a round of accepted drafts
    core = EngineCore(runtime)
    sink = Collector()
    core.add(core.new_sequence(prompt, SamplingParams(max_tokens=30, stop_token_ids=(token,)), sink))
    core.run_until_done()
    assert sink.finish_reason == "stop" and sink.tokens == free[: free.index(token) + 1]
    near_end = Collector()  # the context holds 256 positions: drafts never run past them
    core.add(core.new_sequence([5] * 247, SamplingParams(ignore_eos=True), near_end))
    core.run_until_done()
    expected = generate_alone(plain, [5] * 247, SamplingParams(ignore_eos=True))
    assert near_end.finish_reason == "length" and near_end.tokens == expected and len(expected) == 9
    assert_pool_empty(core)


def test_a_step_returns_at_most_lookahead_plus_one_tokens_and_rolls_nothing_it_keeps(
    llama_dir: Path, llama_draft: Path
) -> None:
    runtime = speculative(llama_dir, llama_draft, num_tokens=4)
    plain = load_runtime(llama_dir)
    prompt = plain.tokenizer.encode("Paged attention keeps the key and value cache")
    greedy = SamplingParams(max_tokens=64, ignore_eos=True)
    table = list(range(8))
    first = runtime.step([StepItem(7, prompt, 0, table, True, greedy)])[0]
    tokens = [*prompt, *first]
    produced = []
    while len(produced) < 20:
        out = runtime.step([StepItem(7, tokens[-1:], len(tokens) - 1, table, True, greedy, 0, 0, 4)])[0]
        assert 1 <= len(out) <= 5
        produced.extend(out)
        tokens.extend(out)
    expected = generate_alone(plain, prompt, SamplingParams(max_tokens=len(produced) + 1, ignore_eos=True))
    assert [*first, *produced] == expected[: len(produced) + 1]
    runtime.release_sequence(7)


def test_seeded_sampling_with_a_draft_is_reproducible(llama_dir: Path, llama_draft: Path) -> None:
    runtime = speculative(llama_dir, llama_draft)
    prompt = runtime.tokenizer.encode("A model server answers requests")

    def draw_tokens(seed: int) -> list[int]:
        params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=seed, ignore_eos=True)
        return generate_alone(runtime, prompt, params)

    assert draw_tokens(3) == draw_tokens(3)
    assert draw_tokens(3) != draw_tokens(4)
    assert len(draw_tokens(5)) == 24


def _dirichlet(rng: random.Random, size: int) -> dict[int, float]:
    weights = [rng.gammavariate(0.7, 1.0) for _ in range(size)]
    return {k: w / sum(weights) for k, w in enumerate(weights)}


def test_the_accept_reject_rule_keeps_the_target_distribution() -> None:
    """A context-free model: at output position ``t`` the target's distribution is ``p[t]`` and the
    draft's ``q[t]`` whatever came before, so every emitted token must be distributed as ``p[t]``,
    independently of the others, however the rounds of ``LOOKAHEAD`` drafts fell."""
    vocab, positions, lookahead, trials = 5, 6, 3, 4000
    rng = random.Random(11)
    p = [_dirichlet(rng, vocab) for _ in range(positions + lookahead + 1)]
    q = [_dirichlet(rng, vocab) for _ in range(positions + lookahead + 1)]
    as_tensor = [torch.tensor([dist[k] for k in range(vocab)]) for dist in p]
    q_tensor = [torch.tensor([dist[k] for k in range(vocab)]) for dist in q]
    generator = torch.Generator()
    emitted: list[list[int]] = []
    drafted: list[list[int]] = []  # what the draft alone would have said: must NOT match p
    for seed in range(trials):
        tokens: list[int] = []
        while len(tokens) < positions:
            start = len(tokens)
            proposal = [
                draw(q_tensor[start + j], mix(seed, start + j, DRAFT_STREAM), generator)
                for j in range(lookahead)
            ]
            if start == 0:
                drafted.append(proposal)
            target = torch.stack(as_tensor[start : start + lookahead + 1])
            draft = torch.stack(q_tensor[start : start + lookahead])
            tokens.extend(accept_sampled(target, draft, proposal, seed, start, generator))
        emitted.append(tokens[:positions])
    for position in range(positions):
        counts = Counter(tokens[position] for tokens in emitted)
        assert chi_square(counts, p[position], trials) < chi2_limit(vocab - 1), position
    pairs = Counter(tokens[0] * vocab + tokens[1] for tokens in emitted)
    joint = {a * vocab + b: p[0][a] * p[1][b] for a in range(vocab) for b in range(vocab)}
    assert chi_square(pairs, joint, trials) < chi2_limit(vocab * vocab - 1)
    # the test has the power to see a wrong rule: the draft's own first token is far from p[0]
    naive = Counter(proposal[0] for proposal in drafted)
    assert chi_square(naive, p[0], trials) > 10 * chi2_limit(vocab - 1)


def test_greedy_verification_keeps_drafts_up_to_the_first_disagreement() -> None:
    assert accept_greedy([4, 5, 6, 7], [4, 5, 6]) == [4, 5, 6, 7]  # all kept, plus a bonus token
    assert accept_greedy([4, 9, 6, 7], [4, 5, 6]) == [4, 9]  # the correction replaces the first miss
    assert accept_greedy([8, 5, 6, 7], [4, 5, 6]) == [8]


def test_sampled_tokens_through_the_runtime_follow_the_target(llama_dir: Path, tmp_path: Path) -> None:
    """The second token of each sequence is the first one a (far-off) draft proposes; over many
    seeds its distribution given the first must be the target's (top-3 at temperature 1)."""
    plain = load_runtime(llama_dir)
    runtime = speculative(llama_dir, write_draft(llama_dir, tmp_path / "noisy", noise=0.3), num_tokens=2)
    prompt = plain.tokenizer.encode("Hello, world! How are")
    params = [
        SamplingParams(max_tokens=3, temperature=1.0, top_k=3, seed=s, ignore_eos=True) for s in range(900)
    ]
    core = EngineCore(runtime, EngineOptions(max_num_seqs=128, max_batched_tokens=4096))
    sinks = [Collector() for _ in params]
    for sink, p in zip(sinks, params, strict=True):
        core.add(core.new_sequence(prompt, p, sink))
    core.run_until_done()
    assert 0 < core.stats.draft_accepted < core.stats.draft_proposed
    by_first: dict[int, Counter[int]] = {}
    for sink in sinks:
        first, second = sink.tokens[:2]
        by_first.setdefault(first, Counter())[second] += 1
    statistic, cells = 0.0, 0
    for first, counts in by_first.items():
        row = logits(plain, prompt, [first, 0])[1]
        target = probabilities(row, params[0])
        expected = {int(k): float(target[k]) for k in torch.nonzero(target).flatten()}
        statistic += chi_square(counts, expected, sum(counts.values()))
        cells += len(expected) - 1
    assert len(by_first) >= 2 and cells >= 4
    assert statistic < chi2_limit(cells)


def test_a_draft_without_the_target_s_vocabulary_or_context_is_refused(
    llama_dir: Path, tmp_path: Path
) -> None:
    other = write_checkpoint(tmp_path / "other", llama_config(), seed=9)  # trained on other words
    with pytest.raises(ConfigError, match="does not share") as caught:
        speculative(llama_dir, other)
    assert caught.value.details["draft"] == "other"
    short = write_draft(llama_dir, tmp_path / "short", noise=0.0)
    config = (
        (short / "config.json")
        .read_text()
        .replace('"max_position_embeddings": 256', '"max_position_embeddings": 128')
    )
    (short / "config.json").write_text(config)
    with pytest.raises(ConfigError, match="128 positions"):
        speculative(llama_dir, short)
    assert speculative(llama_dir, short, max_model_len=128).cache_spec().max_model_len == 128
    with pytest.raises(ConfigError, match="top-level"):
        load_runtime(llama_dir, speculative={"draft": "x"})
    with pytest.raises(ConfigError, match="num_tokens"):
        load_runtime(llama_dir, speculative={**draft_option(short), "num_tokens": 0})


def test_memory_counts_the_draft_and_its_cache(llama_dir: Path, llama_shallow_draft: Path) -> None:
    plain = load_runtime(llama_dir, kv_cache_bytes=1 << 20)
    runtime = speculative(llama_dir, llama_shallow_draft, kv_cache_bytes=1 << 20)
    spec, alone = runtime.cache_spec(), plain.cache_spec()
    assert spec.bytes_per_token == alone.bytes_per_token * 3 // 2  # one draft layer beside two
    assert spec.num_blocks == (1 << 20) // (16 * spec.bytes_per_token)
    assert runtime.model is not None and plain.model is not None
    draft = load_runtime(llama_shallow_draft).model
    assert draft is not None
    weights = runtime.model.parameter_bytes() + draft.parameter_bytes()
    assert runtime.memory_bytes() == weights + spec.num_blocks * 16 * spec.bytes_per_token


def test_drafts_that_keep_failing_are_asked_for_less_and_then_paused(
    llama_dir: Path, llama_shallow_draft: Path
) -> None:
    plain = load_runtime(llama_dir)
    runtime = speculative(llama_dir, llama_shallow_draft)
    jobs = [(p, 60, 0) for p, _, _ in workload(plain.tokenizer.vocab_size, 4, seed=6, longest=40)]
    fixed = EngineCore(runtime, EngineOptions(adaptive_speculation=False))
    check_greedy_equals_plain(plain, fixed, jobs)
    adaptive = EngineCore(runtime, EngineOptions())
    check_greedy_equals_plain(plain, adaptive, jobs)
    generated = sum(m for _, m, _ in jobs)
    assert fixed.stats.draft_proposed > 3 * generated  # four drafts per step, nearly all rejected
    assert 0 < adaptive.stats.draft_proposed < generated / 3  # one now and then, between pauses


def test_speculation_can_be_kept_to_steps_with_few_decoding_sequences(
    llama_dir: Path, llama_draft: Path
) -> None:
    plain = load_runtime(llama_dir)
    runtime = speculative(llama_dir, llama_draft)
    prompts = [p for p, _, _ in workload(plain.tokenizer.vocab_size, 3, seed=8, longest=20)]
    jobs: Workload = [(prompts[0], 40, 0), (prompts[1], 8, 0), (prompts[2], 8, 0)]
    never = EngineCore(runtime, EngineOptions(speculative_max_seqs=0))
    check_greedy_equals_plain(plain, never, jobs)
    assert never.stats.draft_proposed == 0
    alone = EngineCore(runtime, EngineOptions(speculative_max_seqs=1))
    check_greedy_equals_plain(plain, alone, jobs)
    # only once the two short requests are done does the long one draft: at most its last 32 tokens.
    # Its draft then catches up on the prompt and the 8 tokens it skipped in one pass, and predicts
    # as well as a draft that saw everything (a stale draft cache would make it nearly always wrong)
    assert 0 < alone.stats.draft_proposed <= 32
    assert alone.stats.draft_accepted / alone.stats.draft_proposed > 0.3
