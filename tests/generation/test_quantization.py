"""Weight-only int8 in the causal-LM runtime (``options.quantize = "int8"``): smaller weights, the
same greedy choices as float32 almost everywhere, served through a real server.

Agreement is top-1 with float32 on float32's own greedy continuations (teacher-forced: both see the
same context at every position). These random-weight models have small top-2 logit margins, so a
perturbation of about 1% of a logit flips some choices: measured 0.83 (Llama config) and 0.99
(GPT-2 config) with activations at fbgemm's reduced (7-bit) range, which x86 CPUs without VNNI need
(at the full range their int16 pair sums saturate: 18% error on one product, 0.68 agreement). The
threshold 0.75 leaves room for other CPUs, while any real fault (a wrong scale, a weight transposed
or misplaced, a layer left out, saturation) drops agreement far below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from ladle.config import ServerConfig
from ladle.errors import ConfigError
from ladle.generation import SamplingParams
from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions
from ladle.plugins.runtimes.causal_lm.quantize import Dense, DynamicInt8, WeightInt8
from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
from ladle.server import Server
from ladle.testing.lm import SAMPLE_TEXT, llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server

from .support import generate_alone, load_runtime, logits
from .test_continuous_engine import run_batched, workload

AGREEMENT = 0.75


def agreement(reference: CausalLMRuntime, other: CausalLMRuntime, tokens: int = 32) -> float:
    """Share of positions where ``other`` picks ``reference``'s greedy token, on ``reference``'s
    greedy continuations of the sample sentences."""
    same = total = 0
    for text in SAMPLE_TEXT:
        prompt = reference.tokenizer.encode(text)
        continuation = generate_alone(reference, prompt, SamplingParams(max_tokens=tokens, ignore_eos=True))
        want = logits(reference, prompt, continuation).argmax(dim=-1)
        got = logits(other, prompt, continuation).argmax(dim=-1).to(want.device)
        same += int((want == got).sum())
        total += len(continuation)
    return same / total


@pytest.mark.parametrize("checkpoint", ["llama_dir", "gpt2_dir"])
def test_int8_weights_are_smaller_and_agree_with_float32(
    checkpoint: str, request: pytest.FixtureRequest
) -> None:
    directory: Path = request.getfixturevalue(checkpoint)
    full = load_runtime(directory, dtype="float32")
    int8 = load_runtime(directory, dtype="float32", quantize="int8")
    assert int8.model is not None and full.model is not None
    assert all(isinstance(layer.qkv, DynamicInt8) for layer in int8.model.layers)  # fbgemm on CPU
    assert isinstance(int8.model.lm_head, DynamicInt8)
    ratio = int8.model.parameter_bytes() / full.model.parameter_bytes()
    # int8 is a quarter of float32, a third once fbgemm has packed it; norms, biases, scales and
    # GPT-2's position table (a large share of so small a model) stay float32
    assert 0.25 < ratio < (0.4 if checkpoint == "llama_dir" else 0.55)
    memory, full_memory = int8.memory_bytes(), full.memory_bytes()
    assert memory is not None and full_memory is not None and memory < full_memory
    assert full_memory - memory == full.model.parameter_bytes() - int8.model.parameter_bytes()
    assert agreement(full, int8) >= AGREEMENT


def test_int8_without_fbgemm_s_dtype_converts_weights_per_product(llama_dir: Path) -> None:
    full = load_runtime(llama_dir)  # float64: not what fbgemm multiplies
    int8 = load_runtime(llama_dir, quantize="int8")
    assert int8.model is not None
    assert all(isinstance(layer.up, WeightInt8) for layer in int8.model.layers)
    assert int8.model.layers[0].up.q.dtype == torch.int8  # type: ignore[union-attr]
    assert agreement(full, int8) >= AGREEMENT
    dense = load_runtime(llama_dir, quantize="none")
    assert dense.model is not None and isinstance(dense.model.layers[0].up, Dense)


def test_an_unknown_quantize_value_is_refused_naming_the_allowed_ones(llama_dir: Path) -> None:
    for bad in ("int4", "INT8", 8, True):
        with pytest.raises(ConfigError, match=r"quantize must be one of 'none', 'int8'"):
            load_runtime(llama_dir, quantize=bad)


def test_int8_generation_in_a_running_batch(llama_dir: Path) -> None:
    """fbgemm quantizes a product's activations with one scale for all its rows, so a sequence's
    numbers depend a little on its batch: batched int8 output may leave the lone one at a near-tie,
    but not more often than float32 and int8 disagree."""
    int8 = load_runtime(llama_dir, dtype="float32", quantize="int8")
    jobs = workload(int8.tokenizer.vocab_size, 8, seed=4, longest=60)
    core = EngineCore(int8, EngineOptions(max_num_seqs=4, max_batched_tokens=48))
    sinks = run_batched(core, jobs)
    same = total = 0
    for (prompt, max_tokens, _), sink in zip(jobs, sinks, strict=True):
        assert sink.error is None and len(sink.tokens) == max_tokens
        alone = generate_alone(int8, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        first = next(
            (i for i, (a, b) in enumerate(zip(alone, sink.tokens, strict=True)) if a != b), max_tokens
        )
        same += first
        total += max_tokens
    assert same / total >= AGREEMENT / 2
    assert core.kv.pool.used_blocks == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("int8") / "models"
    for name in ("small", "full"):
        write_checkpoint(root / name / "1", llama_config(), seed=1)
    (root / "small" / "model.toml").write_text('options = { quantize = "int8" }\n')
    config = ServerConfig.model_validate({"server": {"repository": str(root)}})
    with run_server(Server(config)) as running:
        yield running


def test_an_int8_model_generates_through_a_server_and_reports_smaller_memory(served: RunningServer) -> None:
    body = {"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=served.url, timeout=60) as client:
        answers = {m: client.post(f"/api/v1/models/{m}/generate", json=body) for m in ("small", "full")}
        for answer in answers.values():
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] == 12
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] <= 4
    same = sum(
        a == b for a, b in zip(*(answers[m].json()["token_ids"] for m in ("small", "full")), strict=True)
    )
    assert same >= 6  # greedy continuations agree for a while (here: how long is up to near-ties)
    memory = {
        m: served.server.manager.models[m].versions["1"].replicas.instances[0].info.memory_bytes  # type: ignore[union-attr]
        for m in ("small", "full")
    }
    assert memory["small"] < memory["full"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_int8_on_cuda_converts_weights_per_product_and_agrees(llama_dir: Path, dtype: str) -> None:
    cpu = load_runtime(llama_dir, dtype="float32")
    full = load_runtime(llama_dir, device="cuda:0", dtype=dtype)
    int8 = load_runtime(llama_dir, device="cuda:0", dtype=dtype, quantize="int8")
    assert int8.model is not None and full.model is not None
    assert isinstance(int8.model.layers[0].qkv, WeightInt8) and int8.model.layers[0].qkv.q.is_cuda
    assert int8.model.parameter_bytes() < full.model.parameter_bytes() * (0.35 if dtype == "float32" else 0.6)
    assert agreement(cpu, int8) >= AGREEMENT
    prompt = int8.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    tokens = generate_alone(int8, prompt, SamplingParams(max_tokens=16, ignore_eos=True))
    assert len(tokens) == 16
