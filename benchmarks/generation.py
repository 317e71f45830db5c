"""Generative serving, side by side: continuous batching against static batching and one request at a time.

One ~19M-parameter Llama-style model (random weights, written here) serves the same seeded workloads
three ways, all through ladle's generation engine (so the kernels are identical and only the
scheduling differs):

* **continuous**: every request queued at once; sequences join and leave the running batch at every
  step (at most ``--batch`` running, as for static batching; plus a row with the cap at the whole
  workload, bounded by the KV cache only);
* **static**: batches of ``--batch`` requests in arrival order; a batch starts when the previous one
  has finished, so each batch waits for its longest member. Two variants: *padded*, as a static batch
  runs in ``generate()``-style serving (prompts left-padded to the batch's longest, every row decoded
  until the longest is done; only the requested tokens count), and *rows leave*, where a finished
  row stops computing (kinder to static batching);
* **one at a time**: each request alone.

Workloads (prompt tokens uniform in 16-256, seeded, all queued at once):

* ``lognormal``: output lengths log-normal, median 32, sigma 1, clipped to 4-512;
* ``uniform``: output lengths uniform in 8-256 (continuous batching's ceiling is about 1.9x there).

Also printed: KV-cache utilisation of the paged cache (token slots written / slots in allocated blocks,
averaged over steps) against contiguous per-sequence allocation to the model's max length and to each
request's own maximum, on the same schedule; and time to first token at low load (one request of 128
prompt tokens at a time).

    python benchmarks/generation.py                 # 64 requests per workload
    python benchmarks/generation.py --quick         # 24 requests, lognormal only, shorter TTFT run
    python benchmarks/generation.py --device cuda --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Goals printed beside the results (never asserted).
TARGET_SPEEDUP_VS_STATIC = 2.5
TARGET_KV_UTILISATION = 0.90
PROMPT_RANGE = (16, 256)
LOGNORMAL = {"median": 32.0, "sigma": 1.0, "low": 4, "high": 512}
UNIFORM = (8, 256)
TTFT_PROMPT = 128

MODEL = {
    "vocab_size": 8192,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 1024,
}


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    max_tokens: int


@dataclass
class Run:
    workload: str
    mode: str
    seconds: float
    generated: int
    steps: int
    kv_utilisation: float
    contiguous_max_len: float
    contiguous_request: float

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds


def workload(name: str, count: int, seed: int, vocab: int) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(*PROMPT_RANGE))]
        if name == "lognormal":
            drawn = rng.lognormvariate(math.log(LOGNORMAL["median"]), LOGNORMAL["sigma"])
            length = int(min(LOGNORMAL["high"], max(LOGNORMAL["low"], round(drawn))))
        else:
            length = rng.randint(*UNIFORM)
        jobs.append(Job(prompt, length))
    return jobs


def build_model(directory: Path) -> Path:
    from ladle.testing.lm import llama_config, write_checkpoint

    return write_checkpoint(directory, llama_config(**MODEL), seed=0)


def load(directory: Path, device: str, threads: int, dtype: str = "float32") -> Any:
    from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
    from ladle.runtime import RuntimeSpec

    budget = "1GiB" if device.startswith("cuda") else "256MiB"
    options = {"kv_cache_bytes": budget, "dtype": dtype}
    runtime = CausalLMRuntime(
        RuntimeSpec("causal-lm", str(directory), device=device, threads=threads, options=options)
    )
    runtime.load()
    runtime.warmup()
    return runtime


def padded(jobs: Sequence[Job], batch: int, pad: int) -> list[Job]:
    """Static batches as padded tensors: prompts left-padded to the batch's longest prompt, and every
    row decoded for as many steps as the batch's longest output."""
    result = []
    for first in range(0, len(jobs), batch):
        group = jobs[first : first + batch]
        width = max(len(job.prompt) for job in group)
        steps = max(job.max_tokens for job in group)
        result.extend(Job([pad] * (width - len(job.prompt)) + job.prompt, steps) for job in group)
    return result


async def _serve(runtime: Any, jobs: Sequence[Job], mode: str, batch: int) -> tuple[float, Any]:
    from ladle.generation import SamplingParams
    from ladle.plugins.batchers.continuous.engine import GenerationEngine

    engine = GenerationEngine(runtime, {"max_num_seqs": batch, "max_waiting": 100_000})
    engine.start()
    try:
        params = [SamplingParams(max_tokens=job.max_tokens, ignore_eos=True) for job in jobs]
        start = time.perf_counter()
        if mode == "continuous":
            await asyncio.gather(*(engine.complete(j.prompt, p) for j, p in zip(jobs, params, strict=True)))
        elif mode == "static":
            for first in range(0, len(jobs), batch):
                group = zip(jobs[first : first + batch], params[first : first + batch], strict=True)
                await asyncio.gather(*(engine.complete(j.prompt, p) for j, p in group))
        else:
            for job, param in zip(jobs, params, strict=True):
                await engine.complete(job.prompt, param)
        seconds = time.perf_counter() - start
        return seconds, engine.stats()
    finally:
        engine.stop()


def serve(runtime: Any, jobs: Sequence[Job], name: str, mode: str, batch: int, label: str) -> Run:
    generated = sum(job.max_tokens for job in jobs)
    if mode == "padded":
        jobs, mode = padded(jobs, batch, pad=2), "static"
    seconds, stats = asyncio.run(_serve(runtime, jobs, mode, batch))
    assert stats["generated_tokens"] == sum(job.max_tokens for job in jobs), stats
    return Run(
        name,
        label,
        seconds,
        generated,
        int(stats["steps"]),
        stats["kv_utilisation"],
        stats["contiguous_max_len_utilisation"],
        stats["contiguous_request_utilisation"],
    )


async def _first_tokens(runtime: Any, repeats: int, vocab: int) -> list[float]:
    from ladle.generation import SamplingParams
    from ladle.plugins.batchers.continuous.engine import GenerationEngine

    engine = GenerationEngine(runtime, {})
    engine.start()
    rng = random.Random(7)
    try:
        times = []
        for _ in range(repeats):
            prompt = [rng.randrange(5, vocab) for _ in range(TTFT_PROMPT)]
            start = time.perf_counter()
            stream = engine.generate(prompt, SamplingParams(max_tokens=8, ignore_eos=True))
            await stream.__anext__()
            times.append(time.perf_counter() - start)
            await stream.collect()
        return times
    finally:
        engine.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="24 requests, lognormal workload only")
    parser.add_argument("--requests", type=int, default=None, help="requests per workload (default 64)")
    parser.add_argument("--batch", type=int, default=16, help="static batch size = continuous running cap")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-alone", action="store_true", help="skip the one-at-a-time runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options = parser.parse_args(argv)
    count = options.requests or (24 if options.quick else 64)
    workloads = ["lognormal"] if options.quick else ["lognormal", "uniform"]

    import torch

    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix="ladle-generation-bench-") as scratch:
        directory = build_model(Path(scratch) / "llama-19m")
        runtime = load(directory, options.device, options.threads, options.dtype)
        vocab = runtime.tokenizer.vocab_size
        params = runtime.args.parameter_count()
        cache = runtime.cache_spec()
        print(
            f"model: Llama-style, {params / 1e6:.1f}M parameters, {runtime.model.dtype}, "
            f"device {options.device}, {options.threads} threads; KV cache {cache.num_blocks} blocks of "
            f"{cache.block_size} tokens; python {platform.python_version()}, torch {torch.__version__}"
        )
        serve(
            runtime, workload("lognormal", 8, options.seed + 99, vocab), "warmup", "continuous", 8, "warmup"
        )
        runs: list[Run] = []
        for name in workloads:
            jobs = workload(name, count, options.seed, vocab)
            modes = [
                ("continuous", options.batch, f"continuous (<= {options.batch} running)"),
                ("continuous", count, f"continuous (<= {count} running)"),
                ("padded", options.batch, f"static, padded ({options.batch})"),
                ("static", options.batch, f"static, rows leave ({options.batch})"),
            ]
            if not options.skip_alone:
                modes.append(("alone", 1, "one at a time"))
            for mode, batch, label in modes:
                run = serve(runtime, jobs, name, mode, batch, label)
                runs.append(run)
                print(
                    f"  {name:9} {label:28} {run.seconds:7.2f} s  {run.tokens_per_second:8.1f} tok/s",
                    flush=True,
                )
        ttft = sorted(asyncio.run(_first_tokens(runtime, 5 if options.quick else 15, vocab)))

    report(runs, ttft, options.batch, count)
    if options.json is not None:
        data = {
            "runs": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs],
            "ttft_ms": [t * 1000 for t in ttft],
            "parameters": params,
            "device": options.device,
            "threads": options.threads,
        }
        options.json.write_text(json.dumps(data, indent=2))
    return 0


def report(runs: list[Run], ttft: list[float], batch: int, count: int) -> None:
    print()
    for name in dict.fromkeys(r.workload for r in runs):
        rows = [r for r in runs if r.workload == name]
        static = next(r for r in rows if r.mode.startswith("static, padded"))
        kind = next(r for r in rows if r.mode.startswith("static, rows leave"))
        print(f"{name}: {count} requests, {rows[0].generated} tokens generated")
        print(f"  {'mode':30} {'tok/s':>9} {'vs static':>10} {'steps':>7} {'tok/step':>9}")
        for run in rows:
            ratio = run.tokens_per_second / static.tokens_per_second
            print(
                f"  {run.mode:30} {run.tokens_per_second:9.1f} {ratio:9.2f}x {run.steps:7d} "
                f"{run.generated / max(1, run.steps):9.2f}"
            )
        headline = next(r for r in rows if r.mode.startswith(f"continuous (<= {batch} "))
        speedup = headline.tokens_per_second / static.tokens_per_second
        goal = TARGET_SPEEDUP_VS_STATIC if name == "lognormal" else None
        verdict = f" (goal >= {goal}x: {'met' if speedup >= goal else 'NOT met'})" if goal else ""
        print(f"  continuous / static (padded) at {batch} running: {speedup:.2f}x{verdict}")
        print(
            f"  continuous / static (rows leave) at {batch} running: "
            f"{headline.tokens_per_second / kind.tokens_per_second:.2f}x"
        )
        kv_met = "met" if headline.kv_utilisation >= TARGET_KV_UTILISATION else "NOT met"
        print(
            f"  KV utilisation (continuous, <= {batch} running): paged {headline.kv_utilisation:.1%} "
            f"(goal >= {TARGET_KV_UTILISATION:.0%}: {kv_met}); "
            f"contiguous to the max length {headline.contiguous_max_len:.1%}; "
            f"contiguous to each request's maximum {headline.contiguous_request:.1%}"
        )
        print()
    median, low, high = (1000 * t for t in (statistics.median(ttft), ttft[0], ttft[-1]))
    print(
        f"time to first token, one request of {TTFT_PROMPT} prompt tokens at a time: "
        f"median {median:.1f} ms, min {low:.1f} ms, max {high:.1f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
