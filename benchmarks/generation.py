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

With ``--versus-transformers`` it compares instead ladle over HTTP (``ladle serve`` in its own
process, every request sent at once to ``/api/v1/models/NAME/generate``) with transformers' own
continuous batching in this process (``continuous_batching_context_manager``: its paged cache and
``sdpa`` attention, one ``add_request`` per request with that request's ``max_new_tokens``), on one
seeded workload (48 requests, prompts 16-256 tokens, outputs uniform in 8-256, greedy, end of
sequence ignored) and two ~15M-parameter random-weight models: a Llama-style one and a GPT-2 one.
Repetitions alternate the two contenders; it prints each one's tokens/s (median, min-max) and tokens
per CPU-second of the computing process (ladle's server; this process for transformers), the ratios
(medians over repetitions of each adjacent pair) and how many sequences came back token-identical.
Both get the same number of threads and a 512 MiB KV cache. On a machine shared with other work the
CPU-time ratio is the steadier one.

    python benchmarks/generation.py                 # 64 requests per workload
    python benchmarks/generation.py --quick         # 24 requests, lognormal only, shorter TTFT run
    python benchmarks/generation.py --device cuda --json results.json
    python benchmarks/generation.py --versus-transformers [--arch gpt2] [--repeats 5]
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


# -- against transformers' continuous batching -------------------------------------------------------

PEER_REQUESTS = 48
TARGET_VS_TRANSFORMERS = 1.5
# Both contenders get a KV cache of this size. transformers otherwise sizes its cache from free memory
# (90% of the machine's on CPU: ~10 GB resident here, and no faster); its batches hold at most
# PEER_BATCH_TOKENS tokens (ladle's continuous batcher schedules up to 512 per step by default).
PEER_KV_BYTES = 512 * 2**20
PEER_BATCH_TOKENS = 1024
PEER_MODELS: dict[str, dict[str, Any]] = {
    "llama": {
        "vocab_size": 8192,
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 1024,
    },
    "gpt2": {"vocab_size": 8192, "n_embd": 384, "n_layer": 6, "n_head": 6, "n_positions": 1024},
}


@dataclass
class PeerRun:
    arch: str
    contender: str
    repetition: int
    seconds: float
    cpu_seconds: float  # of the process that computes: ladle's server, or this one for transformers
    generated: int

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.generated / self.cpu_seconds


def write_peer_repository(root: Path, arch: str, threads: int) -> tuple[Path, int]:
    """``root/ARCH/1`` (a checkpoint) and ``root/ARCH/model.toml``; returns the checkpoint and its
    tokenizer's vocabulary size (prompt ids stay below it, so every token decodes)."""
    from tokenizers import Tokenizer

    from ladle.testing.lm import gpt2_config, llama_config, write_checkpoint

    config = llama_config(**PEER_MODELS[arch]) if arch == "llama" else gpt2_config(**PEER_MODELS[arch])
    directory = write_checkpoint(root / arch / "1", config, seed=0)
    (root / arch / "model.toml").write_text(
        'runtime = "causal-lm"\nbatcher = "continuous"\n'
        f"threads = {threads}\ntimeout = 900.0\n"
        f'[options]\ndtype = "float32"\nkv_cache_bytes = {PEER_KV_BYTES}\n'
    )
    return directory, Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size()


def ladle_server(repository: Path, env: dict[str, str] | None = None) -> Any:
    """``ladle serve REPOSITORY`` on a free port in its own process (a context manager)."""
    from _harness import Contender, Launch, running

    def launch(port: int) -> Launch:
        script = Path(sys.executable).parent / "ladle"
        argv = [str(script)] if script.is_file() else [sys.executable, "-m", "ladle.cli"]
        return Launch([*argv, "serve", str(repository), "--port", str(port)], env=env or {})

    contender = Contender("ladle", launch, path="", startup_timeout=300.0)
    return running(contender, Path(tempfile.gettempdir()) / f"ladle-generation-{os.getpid()}.log")


async def _over_http(url: str, model: str, jobs: Sequence[Job]) -> tuple[float, list[list[int]]]:
    import httpx

    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    async with httpx.AsyncClient(base_url=url, timeout=900.0, limits=limits) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/api/v1/models/{model}/generate",
                    json={
                        "prompt": j.prompt,
                        "max_tokens": j.max_tokens,
                        "temperature": 0.0,
                        "ignore_eos": True,
                    },
                )
                for j in jobs
            )
        )
        seconds = time.perf_counter() - start
    for response in responses:
        if response.status_code != 200:
            raise RuntimeError(f"ladle answered {response.status_code}: {response.text[:300]}")
    return seconds, [response.json()["token_ids"] for response in responses]


def ladle_over_http(url: str, model: str, jobs: Sequence[Job]) -> tuple[float, list[list[int]]]:
    """Every request sent at once; seconds until the last answer, and each answer's tokens."""
    return asyncio.run(_over_http(url, model, jobs))


class TransformersContinuous:
    """transformers' continuous batching (paged cache, ``sdpa``), greedy, end of sequence ignored."""

    def __init__(self, directory: Path, jobs: Sequence[Job]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        self.config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=2, max_new_tokens=256)
        text = self.model.config.get_text_config()
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        token_bytes = 2 * text.num_hidden_layers * kv_heads * head_dim * 4
        batching = ContinuousBatchingConfig()
        batching.num_blocks = PEER_KV_BYTES // (batching.page_size * token_bytes)
        batching.max_batch_tokens = PEER_BATCH_TOKENS
        self.batching = batching
        try:
            from transformers.generation.continuous_batching.utils import WorkloadHints
        except ImportError:  # hints only help it size its batches; older versions take none
            self.hints = None
        else:  # the hints generate_batch() would give for this workload
            self.hints = WorkloadHints(
                max_prompt_length=max(len(j.prompt) for j in jobs),
                max_generated_length=max(j.max_tokens for j in jobs),
                num_requests=len(jobs),
            )

    def run(self, jobs: Sequence[Job]) -> tuple[float, list[list[int]]]:
        """Seconds from the first request added to the last one finished, and each request's tokens."""
        context = self.model.continuous_batching_context_manager(
            generation_config=self.config,
            continuous_batching_config=self.batching,
            workload_hints=self.hints,
            persistent_manager=True,
            timeout=30,
        )
        with context as manager:
            start = time.perf_counter()
            for index, job in enumerate(jobs):
                manager.add_request(job.prompt, f"r{index}", max_new_tokens=job.max_tokens, eos_token_id=-1)
            done: dict[str, list[int]] = {}
            while len(done) < len(jobs):
                result = manager.get_result(timeout=60)
                if result is None and not manager.is_running():
                    raise RuntimeError("transformers' generation thread stopped")
                if result is not None and result.is_finished():
                    done[result.request_id] = list(result.generated_tokens)
            seconds = time.perf_counter() - start
        return seconds, [done[f"r{index}"] for index in range(len(jobs))]

    def close(self) -> None:
        self.model.destroy_cached_continuous_batching_manager()


def versus_transformers(options: argparse.Namespace) -> int:
    import torch
    import transformers

    torch.set_num_threads(options.threads)
    count = options.requests or PEER_REQUESTS
    print(
        f"ladle over HTTP against transformers {transformers.__version__} continuous batching in-process; "
        f"{count} requests, prompts {PROMPT_RANGE[0]}-{PROMPT_RANGE[1]}, outputs {UNIFORM[0]}-{UNIFORM[1]}, "
        f"greedy, EOS ignored; {options.threads} threads each; torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    runs: list[PeerRun] = []
    identical: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ladle-generation-peers-") as scratch:
        repository = Path(scratch) / "models"
        for arch in options.arch.split(","):
            directory, vocab = write_peer_repository(repository, arch, options.threads)
            jobs = workload("uniform", count, options.seed, vocab)
            generated = sum(j.max_tokens for j in jobs)
            peer = TransformersContinuous(directory, jobs)
            with ladle_server(repository) as server:
                warmup = jobs[:8]
                ladle_over_http(server.base_url, arch, warmup)
                peer.run(warmup)
                outputs: dict[str, list[list[int]]] = {}
                for repetition in range(options.repeats):
                    order = ["ladle", "transformers"][:: 1 if repetition % 2 == 0 else -1]
                    for name in order:
                        if name == "ladle":
                            cpu = server.cpu_seconds()
                            seconds, tokens = ladle_over_http(server.base_url, arch, jobs)
                            cpu = server.cpu_seconds() - cpu
                        else:
                            cpu = time.process_time()
                            seconds, tokens = peer.run(jobs)
                            cpu = time.process_time() - cpu
                        if any(len(t) != j.max_tokens for t, j in zip(tokens, jobs, strict=True)):
                            raise RuntimeError(f"{name} did not generate the requested number of tokens")
                        run = PeerRun(arch, name, repetition, seconds, cpu, generated)
                        runs.append(run)
                        outputs[name] = tokens
                        print(
                            f"  {arch:6} {name:13} {seconds:7.2f} s {run.tokens_per_second:8.1f} tok/s "
                            f"{run.tokens_per_cpu_second:8.1f} tok/CPU-s",
                            flush=True,
                        )
            peer.close()
            pairs = zip(outputs["ladle"], outputs["transformers"], strict=True)
            identical[arch] = sum(ours == theirs for ours, theirs in pairs)
    report_versus(runs, identical, count)
    if options.json is not None:
        rows = [
            {
                **asdict(r),
                "tokens_per_second": r.tokens_per_second,
                "tokens_per_cpu_second": r.tokens_per_cpu_second,
            }
            for r in runs
        ]
        options.json.write_text(json.dumps({"runs": rows, "identical": identical}, indent=2))
    return 0


def report_versus(runs: Sequence[PeerRun], identical: dict[str, int], count: int) -> None:
    """Medians per contender, and ladle's ratio to transformers in wall-clock and in CPU time (the
    steadier figure when other work shares the machine)."""
    print()
    labels = {"ladle": "ladle over HTTP", "transformers": "transformers continuous"}
    for arch in dict.fromkeys(r.arch for r in runs):
        mine = {name: [r for r in runs if r.arch == arch and r.contender == name] for name in labels}
        print(f"{arch}: {count} requests, {mine['ladle'][0].generated} tokens generated")
        print(f"  {'':24} {'tok/s':>8} {'min':>8} {'max':>8} {'tok/CPU-s':>10}")
        for name, label in labels.items():
            rates = [r.tokens_per_second for r in mine[name]]
            median = statistics.median(rates)
            cpu = statistics.median(r.tokens_per_cpu_second for r in mine[name])
            print(f"  {label:24} {median:8.1f} {min(rates):8.1f} {max(rates):8.1f} {cpu:10.1f}")
        paired = [
            a.tokens_per_second / b.tokens_per_second
            for a, b in zip(mine["ladle"], mine["transformers"], strict=True)
        ]
        ratio = statistics.median(paired)
        cpu_ratio = statistics.median(
            a.tokens_per_cpu_second / b.tokens_per_cpu_second
            for a, b in zip(mine["ladle"], mine["transformers"], strict=True)
        )
        met = "met" if ratio >= TARGET_VS_TRANSFORMERS else "NOT met"
        print(
            f"  ladle / transformers: {ratio:.2f}x tokens/s (median of repetitions, "
            f"{min(paired):.2f}-{max(paired):.2f}x; goal >= {TARGET_VS_TRANSFORMERS}x: {met}), "
            f"{cpu_ratio:.2f}x tokens per CPU-second"
        )
        print(f"  token-identical sequences: {identical[arch]}/{count}")
        print()


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
    parser.add_argument(
        "--versus-transformers",
        action="store_true",
        help="ladle over HTTP against transformers' continuous batching instead (48 requests by default)",
    )
    parser.add_argument(
        "--arch", default="llama,gpt2", help="with --versus-transformers: llama, gpt2 or both"
    )
    parser.add_argument("--repeats", type=int, default=3, help="with --versus-transformers: repetitions")
    options = parser.parse_args(argv)
    if options.versus_transformers:
        return versus_transformers(options)
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
