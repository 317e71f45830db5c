"""The causal-LM runtime and the engine on a CUDA device (run only where one is present)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ladle.generation import SamplingParams
from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions

from .support import assert_same_greedy, draft_option, generate_alone, load_runtime, margins
from .test_continuous_engine import run_batched, workload

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_cuda_float64_greedy_equals_cpu_and_batching_changes_nothing(llama_dir: Path) -> None:
    cpu = load_runtime(llama_dir)
    gpu = load_runtime(llama_dir, device="cuda:0")
    assert gpu.model is not None and gpu.model.device.type == "cuda"
    jobs = workload(cpu.tokenizer.vocab_size, 8, seed=11, longest=90)
    core = EngineCore(gpu, EngineOptions(max_num_seqs=5, max_batched_tokens=64))
    sinks = run_batched(core, jobs)
    for (prompt, max_tokens, _), sink in zip(jobs, sinks, strict=True):
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        expected = generate_alone(cpu, prompt, params)
        assert_same_greedy(expected, generate_alone(gpu, prompt, params), margins(cpu, prompt, expected))
        assert_same_greedy(expected, sink.tokens, margins(cpu, prompt, expected))
    assert core.kv.pool.used_blocks == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_cuda_half_precision_runs_and_sampling_is_seeded(llama_dir: Path, dtype: str) -> None:
    gpu = load_runtime(llama_dir, device="cuda:0", dtype=dtype)
    assert gpu.model is not None and str(gpu.model.dtype) == f"torch.{dtype}"
    prompt = gpu.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=50, seed=4, ignore_eos=True)
    first = generate_alone(gpu, prompt, params)
    assert len(first) == 16 and first == generate_alone(gpu, prompt, params)


def test_cuda_cache_is_sized_from_free_device_memory(llama_dir: Path) -> None:
    gpu = load_runtime(llama_dir, device="cuda:0", kv_cache_bytes=None, gpu_memory_utilization=0.05)
    spec = gpu.cache_spec()
    total = torch.cuda.mem_get_info()[1]
    assert spec.num_blocks * spec.block_size * spec.bytes_per_token <= 0.05 * total
    assert spec.num_blocks * spec.block_size >= spec.max_model_len


def test_cuda_speculative_greedy_equals_cpu_without_a_draft(llama_dir: Path, llama_draft: Path) -> None:
    cpu = load_runtime(llama_dir)
    gpu = load_runtime(llama_dir, device="cuda:0", speculative=draft_option(llama_draft))
    jobs = workload(cpu.tokenizer.vocab_size, 8, seed=12, longest=90)
    core = EngineCore(gpu, EngineOptions(max_num_seqs=5, max_batched_tokens=64))
    sinks = run_batched(core, jobs)
    for (prompt, max_tokens, _), sink in zip(jobs, sinks, strict=True):
        expected = generate_alone(cpu, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        assert_same_greedy(expected, sink.tokens, margins(cpu, prompt, expected))
    assert 0 < core.stats.draft_accepted < core.stats.draft_proposed
    assert core.kv.pool.used_blocks == 0
