"""Weight-only int8 against float32 in the causal-LM runtime, side by side: memory, tokens/s, quality.

Model: the ~19M-parameter Llama-style model of ``generation.py`` (random weights, written here),
served with ``options.quantize = "int8"`` and without (float32). On CPU, int8 products run on
fbgemm's dynamic int8 kernel (``plugins/runtimes/causal_lm/quantize.py`` says why that one).

* **Memory**: the weight bytes the runtime holds (``memory_bytes()`` less its KV cache), and the
  growth of the resident set while loading, each variant in a fresh process that loaded a tiny
  model first (so libraries and kernels are paged in already), KV cache excluded.
* **Speed**: the same seeded requests (32-token prompts, 64 generated tokens, greedy, end of
  sequence ignored) through ladle's generation engine in this process (``EngineCore``), at
  concurrency 1 (one after another) and 16 (all at once); repetitions interleave the variants, the
  figures are medians, each ratio the median of per-repetition ratios.
* **Quality**: top-1 agreement with float32, teacher-forced on float32's greedy continuations (64
  tokens) of a fixed prompt set (``ladle.testing.lm.SAMPLE_TEXT``), so both see the same context at
  every position; and the perplexity of a fixed text (those sentences joined) under each. With
  random weights the perplexity itself is about the vocabulary size for both: only the ratio says
  anything. Agreement on a random-weight model is a pessimistic figure: its top-2 logit margins are
  small, so small perturbations flip more choices than they would in a trained model.

The CPUs of the machine this runs on are shared with other work: only the ratios measured side by
side mean much.

    python benchmarks/quantization.py                 # 3 repetitions (~3 min on 2 cores)
    python benchmarks/quantization.py --quick         # 1 repetition, 8 requests
    python benchmarks/quantization.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import MODEL  # the model of generation.py

PROMPT_TOKENS = 32
MIN_CACHE = "9MiB"  # a little more than one sequence of the model's 1024 positions
VARIANTS = ("float32", "int8")


def load(directory: Path, quantize: str, threads: int, cache: str = "64MiB") -> Any:
    from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
    from ladle.runtime import RuntimeSpec

    options = {"kv_cache_bytes": cache, "dtype": "float32", "quantize": quantize}
    runtime = CausalLMRuntime(RuntimeSpec("causal-lm", str(directory), threads=threads, options=options))
    runtime.load()
    runtime.warmup()
    return runtime


def weight_bytes(runtime: Any) -> int:
    cache = runtime.cache_spec()
    memory: int = runtime.memory_bytes()
    return memory - cache.num_blocks * cache.block_size * cache.bytes_per_token


def resident_growth(directory: Path, quantize: str) -> int:
    """Resident-set growth of loading one variant in a fresh process (bytes, KV cache excluded)."""
    result = subprocess.run(
        [sys.executable, __file__, "--resident", str(directory), quantize],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


def _resident(directory: Path, quantize: str) -> None:
    """Load a tiny model first (libraries and kernels paged in), then measure loading the real one."""
    import ctypes
    import gc

    from ladle.runtime import process_rss_bytes
    from ladle.testing.lm import llama_config, write_checkpoint

    def settled() -> int:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # glibc: hand freed heap pages back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        return process_rss_bytes()

    with tempfile.TemporaryDirectory() as scratch:
        tiny = write_checkpoint(Path(scratch) / "tiny", llama_config(), seed=0)
        runtime = load(tiny, quantize, threads=1, cache="1MiB")
        del runtime
    before = settled()
    runtime = load(directory, quantize, threads=1, cache=MIN_CACHE)
    cache = runtime.cache_spec()
    print(settled() - before - cache.num_blocks * cache.block_size * cache.bytes_per_token)


def serve(
    runtime: Any, prompts: Sequence[list[int]], tokens: int, concurrency: int
) -> tuple[float, list[list[int]]]:
    from ladle.generation import GenerationChunk, SamplingParams
    from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions

    core = EngineCore(runtime, EngineOptions(max_num_seqs=concurrency, prefix_caching=False))
    outputs: list[list[int]] = [[] for _ in prompts]

    def sink_for(index: int) -> Any:
        def sink(event: GenerationChunk | BaseException) -> None:
            assert not isinstance(event, BaseException), event
            outputs[index].extend(event.token_ids)

        return sink

    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        for index in range(first, min(len(prompts), first + concurrency)):
            core.add(core.new_sequence(prompts[index], params, sink_for(index)))
        core.run_until_done()
    return time.perf_counter() - start, outputs


def forward_logits(runtime: Any, tokens: Sequence[int]) -> Any:
    """Logits at every position of ``tokens`` from one pass over a scratch cache."""
    import torch

    from ladle.plugins.runtimes.causal_lm.model import Prefill, StepInputs

    model = runtime.model
    saved = model.k_cache, model.v_cache
    n = len(tokens)
    model.allocate_cache(-(-n // model.block_size), model.block_size)
    try:
        inputs = StepInputs(
            torch.tensor(list(tokens)),
            torch.arange(n),
            torch.arange(n),
            torch.arange(n),
            prefills=[Prefill(0, n, 0, None, None)],
        )
        with torch.inference_mode():
            return model.forward(inputs).float()
    finally:
        model.k_cache, model.v_cache = saved


def quality(full: Any, int8: Any, continuation: int) -> dict[str, float]:
    import torch

    from ladle.generation import SamplingParams
    from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions
    from ladle.testing.lm import SAMPLE_TEXT

    same = total = 0
    for text in SAMPLE_TEXT:
        prompt = full.tokenizer.encode(text)
        core = EngineCore(full, EngineOptions(prefix_caching=False))
        generated: list[int] = []
        sink = lambda event, out=generated: out.extend(event.token_ids)  # noqa: E731
        core.add(core.new_sequence(prompt, SamplingParams(max_tokens=continuation, ignore_eos=True), sink))
        core.run_until_done()
        tokens = [*prompt, *generated]
        rows = slice(len(prompt) - 1, len(tokens) - 1)
        want = forward_logits(full, tokens)[rows].argmax(dim=-1)
        got = forward_logits(int8, tokens)[rows].argmax(dim=-1)
        same += int((want == got).sum())
        total += len(generated)
    text = full.tokenizer.encode(" ".join(SAMPLE_TEXT))
    targets = torch.tensor(text[1:])
    nll = {
        name: float(torch.nn.functional.cross_entropy(forward_logits(runtime, text)[:-1], targets))
        for name, runtime in (("float32", full), ("int8", int8))
    }
    return {
        "top1_agreement": same / total,
        "positions": total,
        "perplexity_float32": math.exp(nll["float32"]),
        "perplexity_int8": math.exp(nll["int8"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="requests per run (at each concurrency)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 8 requests")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--resident", nargs=2, metavar=("DIR", "QUANTIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resident:
        _resident(Path(args.resident[0]), args.resident[1])
        return
    if args.quick:
        args.repeats, args.requests = 1, 8
    from ladle.testing.lm import llama_config, write_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="ladle-quantization-"))
    try:
        directory = write_checkpoint(workdir / "model", llama_config(**MODEL), seed=0)
        runtimes = {
            "float32": load(directory, "none", args.threads),
            "int8": load(directory, "int8", args.threads),
        }
        memory = {name: weight_bytes(runtime) for name, runtime in runtimes.items()}
        resident = {
            name: resident_growth(directory, q) for name, q in (("float32", "none"), ("int8", "int8"))
        }
        rng = random.Random(0)
        prompts = [
            [rng.randrange(5, MODEL["vocab_size"]) for _ in range(PROMPT_TOKENS)]
            for _ in range(args.requests)
        ]
        speeds: dict[tuple[str, int], list[float]] = {}
        outputs: dict[tuple[str, int], list[list[int]]] = {}
        for repeat in range(args.repeats):
            for concurrency in (1, 16):
                order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
                for name in order:
                    seconds, tokens = serve(runtimes[name], prompts, args.tokens, concurrency)
                    rate = args.requests * args.tokens / seconds
                    speeds.setdefault((name, concurrency), []).append(rate)
                    outputs[(name, concurrency)] = tokens
                    print(f"  c={concurrency:<2} {name:8} {rate:7.1f} tok/s", flush=True)
        figures = quality(runtimes["float32"], runtimes["int8"], args.tokens)
        report(memory, resident, speeds, outputs, figures)
        if args.json:
            data = {
                "weight_bytes": memory,
                "resident_growth_bytes": resident,
                "tokens_per_second": {f"{n} c={c}": v for (n, c), v in speeds.items()},
                "quality": figures,
            }
            args.json.write_text(json.dumps(data, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def report(
    memory: dict[str, int],
    resident: dict[str, int],
    speeds: dict[tuple[str, int], list[float]],
    outputs: dict[tuple[str, int], list[list[int]]],
    figures: dict[str, float],
) -> None:
    mib = 2**20
    print()
    print("| figure | float32 | int8 | int8 / float32 |")
    print("|---|---|---|---|")
    print(
        f"| weights held (MiB) | {memory['float32'] / mib:.1f} | {memory['int8'] / mib:.1f} | "
        f"{memory['int8'] / memory['float32']:.2f} |"
    )
    print(
        f"| resident growth at load, cache excluded (MiB) | {resident['float32'] / mib:.1f} | "
        f"{resident['int8'] / mib:.1f} | {resident['int8'] / resident['float32']:.2f} |"
    )
    for concurrency in (1, 16):
        full, int8 = speeds[("float32", concurrency)], speeds[("int8", concurrency)]
        ratios = [b / a for a, b in zip(full, int8, strict=True)]
        print(
            f"| tokens/s at concurrency {concurrency} (median, min-max) | {spread(full)} | {spread(int8)} "
            f"| {statistics.median(ratios):.2f}x |"
        )
    full_ppl, int8_ppl = figures["perplexity_float32"], figures["perplexity_int8"]
    print(f"| perplexity of the fixed text | {full_ppl:.1f} | {int8_ppl:.1f} | {int8_ppl / full_ppl:.4f} |")
    print(
        f"| top-1 agreement with float32 ({int(figures['positions'])} positions, teacher-forced) | 1 | "
        f"{figures['top1_agreement']:.3f} | |"
    )
    for concurrency in (1, 16):
        pairs = zip(outputs[("float32", concurrency)], outputs[("int8", concurrency)], strict=True)
        prefix = [
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a)) for a, b in pairs
        ]
        print(
            f"| free-running greedy: tokens equal to float32's before the first difference, c={concurrency} "
            f"(median of {len(prefix)}) | | {statistics.median(prefix):.0f} | |"
        )


if __name__ == "__main__":
    main()
