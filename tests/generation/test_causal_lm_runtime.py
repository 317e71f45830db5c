"""The causal-LM runtime: loading HF-style checkpoints, agreeing with transformers, sampling, tokenizer."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from ladle import PluginHost
from ladle.errors import ConfigError, InvalidRequestError
from ladle.generation import SamplingParams, StepItem, StepRuntime
from ladle.plugins.runtimes.causal_lm import detect
from ladle.plugins.runtimes.causal_lm import inputs as causal_lm_inputs
from ladle.plugins.runtimes.causal_lm.grouping import length_groups
from ladle.testing.lm import gpt2_config, llama_config, write_checkpoint

from .support import assert_same_greedy, generate_alone, load_runtime, logits, margins

PROMPTS = ["Hello, world! How are you today?", "Paged attention keeps the key and value cache"]
CHECKPOINTS = ["llama_dir", "gpt2_dir"]


def test_detect_recognises_a_checkpoint_directory(llama_dir: Path, tmp_path: Path) -> None:
    assert detect(llama_dir)
    for missing in ("config.json", "tokenizer.json", "model.safetensors"):
        copy = tmp_path / missing
        shutil.copytree(llama_dir, copy)
        (copy / missing).unlink()
        assert not detect(copy)


def test_the_plugins_are_registered_without_importing_torch_at_registration() -> None:
    host = PluginHost().discover()
    runtime = host.get("runtime", "causal-lm")
    assert set(runtime.requires) == {"torch", "safetensors", "tokenizers"} and runtime.extra == "llm"
    assert issubclass(runtime.load(), StepRuntime)
    assert host.get("batcher", "continuous").load().__name__ == "ContinuousBatcher"


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_greedy_output_equals_transformers(checkpoint: str, request: pytest.FixtureRequest) -> None:
    transformers = pytest.importorskip("transformers")
    directory: Path = request.getfixturevalue(checkpoint)
    runtime = load_runtime(directory)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float64).eval()
    for prompt in PROMPTS:
        ids = runtime.tokenizer.encode(prompt)
        with torch.no_grad():
            expected = reference.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=24,
                min_new_tokens=24,
                do_sample=False,
                pad_token_id=2,
            )[0, len(ids) :].tolist()
        ours = generate_alone(runtime, ids, SamplingParams(max_tokens=24, ignore_eos=True))
        assert_same_greedy(expected, ours, margins(runtime, ids, expected))
        with torch.no_grad():
            want = reference(torch.tensor([ids + expected])).logits[0, len(ids) - 1 : -1]
        # transformers runs norms and RoPE in float32 even for a float64 model: close, not equal
        assert torch.allclose(logits(runtime, ids, expected), want, atol=1e-5, rtol=0)


def test_chunked_prefill_and_decode_give_the_same_logits_as_one_pass(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    ids = runtime.tokenizer.encode(PROMPTS[0])
    table = list(range(8))
    greedy = SamplingParams()
    one_pass = runtime.step([StepItem(0, ids, 0, table, True, greedy)])
    runtime.step([StepItem(0, ids[:5], 0, table, False, greedy)])
    runtime.step([StepItem(0, ids[5:9], 5, table, False, greedy)])
    assert runtime.step([StepItem(0, ids[9:], 9, table, True, greedy)]) == one_pass
    # the same prompt fed one token at a time, through a shuffled block table
    shuffled = [7, 3, 5, 1, 0, 2, 4, 6]
    token_by_token = [runtime.step([StepItem(1, [t], i, shuffled, True, greedy)]) for i, t in enumerate(ids)]
    assert token_by_token[-1] == one_pass


def _cheapest_split_cost(lengths: list[int], overhead: float) -> float:
    """Every split of ``lengths`` into runs, tried one by one (the reference for ``length_groups``)."""
    n = len(lengths)
    best = float("inf")
    for cuts in itertools.product((False, True), repeat=n - 1):
        stops = [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        starts = [0, *stops[:-1]]
        best = min(best, sum((b - a) * lengths[b - 1] + overhead for a, b in zip(starts, stops, strict=True)))
    return best


def test_decode_groups_are_the_cheapest_split() -> None:
    rng = random.Random(3)
    for _ in range(300):
        lengths = sorted(rng.randint(1, rng.choice([4, 60, 600])) for _ in range(rng.randint(1, 9)))
        overhead = rng.choice([0.0, 1.0, 25.0, 400.0, 1e9])
        runs = length_groups(lengths, overhead)
        assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
        assert all(a < b for a, b in runs) and all(x[1] == y[0] for x, y in itertools.pairwise(runs))
        cost = sum((b - a) * lengths[b - 1] + overhead for a, b in runs)
        assert cost == pytest.approx(_cheapest_split_cost(lengths, overhead))
    assert length_groups([5, 5, 5, 300, 300], 10.0) == [(0, 3), (3, 5)]
    assert length_groups([5, 6, 300], 1e9) == [(0, 3)]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("group_cost", [None, 0], ids=["default-groups", "one-group-per-length"])
def test_one_step_over_many_context_lengths_equals_each_sequence_alone(
    checkpoint: str, group_cost: int | None, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if group_cost is not None:
        monkeypatch.setattr(causal_lm_inputs, "GROUP_OVERHEAD_ELEMENTS", group_cost)
    runtime = load_runtime(request.getfixturevalue(checkpoint))
    size = runtime.cache_spec().block_size
    rng = random.Random(7)
    vocab = runtime.tokenizer.vocab_size
    contexts = [1, 2, 16, 17, 40, 41, 100, 200]
    blocks = list(range(sum(-(-(n + 1) // size) for n in contexts) + 4))
    rng.shuffle(blocks)
    greedy = SamplingParams()
    decodes, alone = [], []
    for seq, n in enumerate(contexts):
        table, blocks = blocks[: -(-(n + 1) // size)], blocks[-(-(n + 1) // size) :]
        runtime.step([StepItem(seq, [rng.randrange(5, vocab) for _ in range(n)], 0, table, False, greedy)])
        item = StepItem(seq, [rng.randrange(5, vocab)], n, table, True, greedy)
        decodes.append(item)
        alone.append(runtime.step([item])[0])
    # a prompt continuing in the same step reads its earlier K/V through the same scratch buffers
    prompt = [rng.randrange(5, vocab) for _ in range(30)]
    runtime.step([StepItem(99, prompt[:12], 0, blocks, False, greedy)])
    continued = StepItem(99, prompt[12:], 12, blocks, True, greedy)
    expected = runtime.step([continued])[0]
    items = [*decodes, continued]
    order = list(range(len(items)))
    rng.shuffle(order)
    together = runtime.step([items[i] for i in order])
    assert [together[order.index(i)] for i in range(len(items))] == [*alone, expected]
    assert runtime.model is not None
    feeds = [causal_lm_inputs.Feed(item.tokens, item.start, item.block_table, 1) for item in items]
    inputs, _ = causal_lm_inputs.build_inputs(runtime.model, [feeds[i] for i in order])
    groups = inputs.decode_groups
    assert sum(group.count for group in groups) == len(decodes)
    if group_cost == 0:  # every context length its own group: no padding, no mask
        assert len(groups) == len(contexts) and all(group.mask is None for group in groups)


def test_seeded_sampling_is_reproducible_and_filters_work(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir)
    ids = runtime.tokenizer.encode(PROMPTS[1])

    def draw(**params: object) -> list[int]:
        return generate_alone(runtime, ids, SamplingParams(max_tokens=16, ignore_eos=True, **params))  # type: ignore[arg-type]

    greedy = draw()
    assert draw(temperature=1.0, seed=5) == draw(temperature=1.0, seed=5)
    assert draw(temperature=1.0, seed=5) != draw(temperature=1.0, seed=6)
    assert draw(temperature=1.5, top_k=1, seed=3) == greedy
    assert draw(temperature=1.5, top_p=1e-9, seed=3) == greedy
    varied = draw(temperature=5.0, top_k=3, seed=1)
    assert varied != greedy


def test_options_and_cache_spec(llama_dir: Path) -> None:
    runtime = load_runtime(llama_dir, block_size=8, kv_cache_bytes="1MiB")
    spec = runtime.cache_spec()
    assert spec.paged and spec.block_size == 8 and spec.max_model_len == 256
    assert spec.bytes_per_token == 2 * 2 * 2 * 16 * 8  # K and V, 2 layers, 2 KV heads of 16, float64
    assert spec.num_blocks == (1 << 20) // (8 * spec.bytes_per_token)
    memory = runtime.memory_bytes()
    assert memory is not None and memory > spec.num_blocks * 8 * spec.bytes_per_token
    slots = load_runtime(llama_dir, paged=False, max_model_len=64)
    assert not slots.cache_spec().paged and slots.cache_spec().block_size == 64
    with pytest.raises(ConfigError, match="kv_cache_bytes"):
        load_runtime(llama_dir, kv_cache_bytes=1024)
    with pytest.raises(ConfigError, match="dtype"):
        load_runtime(llama_dir, dtype="float8")
    with pytest.raises(ConfigError, match="max_model_len"):
        load_runtime(llama_dir, max_model_len=100_000)


def test_bad_checkpoints_are_config_errors_naming_what_is_wrong(tmp_path: Path) -> None:
    directory = write_checkpoint(tmp_path / "ok", llama_config(), seed=3)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(ConfigError, match="model_type"):
        load_runtime(directory)
    (directory / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(ConfigError, match="embed_tokens"):
        load_runtime(directory)
    broken = write_checkpoint(tmp_path / "gpt2", gpt2_config(), seed=3)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(broken / "model.safetensors"))
    del weights["transformer.h.1.mlp.c_fc.weight"]
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"h\.1\.mlp\.c_fc\.weight"):
        load_runtime(broken)


def test_a_chat_template_from_the_checkpoint_is_rendered(llama_dir: Path) -> None:
    tokenizer = load_runtime(llama_dir).tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
    ]
    text = tokenizer.apply_chat_template(messages)
    assert (
        text == "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer.library_tokenizer.token_to_id("<|im_start|>")  # no BOS added on top
    assert tokenizer.library_tokenizer.token_to_id("<|im_end|>") in tokenizer.eos_token_ids
    assert not tokenizer.apply_chat_template(messages, add_generation_prompt=False).endswith("assistant\n")
    for bad in ([], [{"content": "no role"}], [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(InvalidRequestError) as caught:
            tokenizer.apply_chat_template(bad)
        assert caught.value.details["param"] == "messages"


def test_a_template_that_raises_is_a_400(tmp_path: Path) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('first message must be from the user') }}{% endif %}ok"
    )
    directory = write_checkpoint(tmp_path / "strict", llama_config(), seed=4, chat_template=template)
    tokenizer = load_runtime(directory).tokenizer
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(InvalidRequestError, match="first message must be from the user"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_without_a_template_the_documented_default_applies(gpt2_dir: Path) -> None:
    tokenizer = load_runtime(gpt2_dir).tokenizer
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages) == "user: Hello\nassistant: Hi\nassistant:"
    assert tokenizer.decode(tokenizer.encode_chat(messages)) == "user: Hello\nassistant: Hi\nassistant:"


def test_incremental_decoding_equals_decoding_at_once(llama_dir: Path) -> None:
    tokenizer = load_runtime(llama_dir).tokenizer
    text = "naïve café — 漢字 ✓ done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = tokenizer.decoder()
    pieces = [decoder.step(token) for token in ids]
    assert "".join(p for p in pieces if p) == text == tokenizer.decode(ids)
