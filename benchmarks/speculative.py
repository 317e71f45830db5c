"""Speculative decoding on CPU, side by side: tokens/s and inter-token latency with and without a draft.

Target: the ~19M-parameter Llama-style model of ``generation.py`` (random weights, written here).
Drafts: the target's first two of its eight layers with its embeddings, final norm and LM head (an
"early exit" draft, about a third of its weights), in float32 and in int8 (``quantize = "int8"``),
proposing up to 4 tokens per sequence and step: by default as many as one more than the target kept
last time, with drafting paused for a while in a sequence whose drafts keep failing (the engine's
``adaptive_speculation``); the ``always 4`` row turns that off. Two targets:

* ``random``: the weights as drawn. Its deep layers overturn what the first two predict, so the
  draft is almost never right (acceptance ~0): every step pays for drafts it throws away.
* ``refining``: the same weights with the output projections (``o_proj``, ``down_proj``) of layers
  3-8 scaled by 0.03, so the deep layers refine the first two's prediction instead of replacing it
  and the early exit agrees most of the time (~0.7): a stand-in for a draft that predicts its
  target well. Trained drafts of real models agree more or less than this depending on the text.

Every variant serves the same seeded requests (32-token prompts, 64 generated tokens, greedy, end of
sequence ignored) through ladle's generation engine in this process (``EngineCore``, no HTTP), at
concurrency 1 (one request after another) and 16 (all at once, 16 running). Repetitions interleave
the variants; the figures are medians over repetitions and each ratio is the median of the
per-repetition ratios to the no-draft run. Inter-token latency is per token: a step that emits
``m`` tokens of a sequence counts ``m`` gaps of a ``m``-th of the time since its previous chunk;
the chunk gap is the time between a sequence's chunks. Greedy output with a draft is compared token
for token with the output without one.

The CPUs of the machine this runs on are shared with other work: only the ratios measured side by
side mean much.

    python benchmarks/speculative.py                 # 3 repetitions (~5 min on 2 cores)
    python benchmarks/speculative.py --quick         # 1 repetition, 8 requests, refining target only
    python benchmarks/speculative.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation import MODEL  # the model of generation.py

DRAFT_LAYERS = 2
REFINING_SCALE = 0.03
NUM_TOKENS = 4
PROMPT_TOKENS = 32


@dataclass
class Run:
    target: str
    concurrency: int
    variant: str
    seconds: float
    generated: int
    acceptance: float
    proposed: int
    token_gaps: list[float] = field(default_factory=list)
    chunk_gaps: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds


def write_models(root: Path) -> dict[str, tuple[Path, Path]]:
    """``{target name: (target directory, draft directory)}``."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from ladle.testing.lm import llama_config, write_checkpoint

    random_dir = write_checkpoint(root / "random", llama_config(**MODEL), seed=0)
    refining_dir = root / "refining"
    shutil.copytree(random_dir, refining_dir)
    weights = load_file(str(refining_dir / "model.safetensors"))
    for name, value in weights.items():
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) >= DRAFT_LAYERS and parts[-2] in ("o_proj", "down_proj"):
            weights[name] = (value * REFINING_SCALE).astype(np.float32)
    save_file(weights, str(refining_dir / "model.safetensors"))
    models = {}
    for target in (random_dir, refining_dir):
        draft = root / f"{target.name}-draft"
        draft.mkdir()
        for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(target / file, draft / file)
        config = json.loads((target / "config.json").read_text())
        config["num_hidden_layers"] = DRAFT_LAYERS
        (draft / "config.json").write_text(json.dumps(config))
        kept = {
            name: value
            for name, value in load_file(str(target / "model.safetensors")).items()
            if not (name.split(".")[1] == "layers" and int(name.split(".")[2]) >= DRAFT_LAYERS)
        }
        save_file(kept, str(draft / "model.safetensors"))
        models[target.name] = (target, draft)
    return models


def load(target: Path, draft: Path | None, quantize: str, threads: int) -> Any:
    from ladle.plugins.runtimes.causal_lm.runtime import CausalLMRuntime
    from ladle.runtime import RuntimeSpec

    options: dict[str, Any] = {"kv_cache_bytes": "256MiB", "dtype": "float32"}
    if draft is not None:
        options["speculative"] = {
            "draft": draft.name,
            "artifact": str(draft),
            "num_tokens": NUM_TOKENS,
            "options": {"dtype": "float32", "quantize": quantize},
        }
    runtime = CausalLMRuntime(RuntimeSpec("causal-lm", str(target), threads=threads, options=options))
    runtime.load()
    runtime.warmup()
    return runtime


def serve(runtime: Any, prompts: Sequence[list[int]], tokens: int, concurrency: int, adaptive: bool) -> Run:
    from ladle.generation import GenerationChunk, SamplingParams
    from ladle.plugins.batchers.continuous.engine import EngineCore, EngineOptions

    options = EngineOptions(max_num_seqs=concurrency, prefix_caching=False, adaptive_speculation=adaptive)
    core = EngineCore(runtime, options)
    token_gaps: list[float] = []
    core.timing = lambda first, gaps: token_gaps.extend(gaps)
    outputs: list[list[int]] = [[] for _ in prompts]
    chunk_gaps: list[float] = []
    last: dict[int, float] = {}

    def sink_for(index: int) -> Any:
        def sink(event: GenerationChunk | BaseException) -> None:
            assert not isinstance(event, BaseException), event
            now = time.perf_counter()
            if index in last:
                chunk_gaps.append(now - last[index])
            last[index] = now
            outputs[index].extend(event.token_ids)

        return sink

    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        for index in range(first, min(len(prompts), first + concurrency)):
            core.add(core.new_sequence(prompts[index], params, sink_for(index)))
        core.run_until_done()
    seconds = time.perf_counter() - start
    stats = core.stats.to_dict()
    assert stats["generated_tokens"] == tokens * len(prompts), stats
    return Run(
        "",
        concurrency,
        "",
        seconds,
        int(stats["generated_tokens"]),
        stats["draft_acceptance"],
        int(stats["draft_proposed"]),
        token_gaps,
        chunk_gaps,
        outputs,
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="requests per run (at each concurrency)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 8 requests, refining target only")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.requests = 1, 8
    workdir = Path(tempfile.mkdtemp(prefix="ladle-speculative-"))
    try:
        models = write_models(workdir)
        targets = ["refining"] if args.quick else ["random", "refining"]
        rng = random.Random(0)
        prompts = [
            [rng.randrange(5, MODEL["vocab_size"]) for _ in range(PROMPT_TOKENS)]
            for _ in range(args.requests)
        ]
        # variant -> (draft weights: None for no draft, adaptive draft lengths)
        variants = {
            "no draft": (None, True),
            "draft fp32": ("none", True),
            "draft int8": ("int8", True),
            "draft int8, always 4": ("int8", False),
        }
        runs: list[Run] = []
        for target in targets:
            directory, draft = models[target]
            loaded = {
                quantize: load(
                    directory, None if quantize is None else draft, quantize or "none", args.threads
                )
                for quantize in {quantize for quantize, _ in variants.values()}
            }
            runtimes = {name: (loaded[quantize], adaptive) for name, (quantize, adaptive) in variants.items()}
            for repeat in range(args.repeats):
                for concurrency in (1, 16):
                    names = list(runtimes)
                    names = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate the order
                    for name in names:
                        runtime, adaptive = runtimes[name]
                        run = serve(runtime, prompts, args.tokens, concurrency, adaptive)
                        run.target, run.variant = target, name
                        runs.append(run)
                        print(
                            f"  {target:8} c={concurrency:<2} {name:20} {run.tokens_per_second:7.1f} tok/s  "
                            f"acceptance {run.acceptance:.2f}",
                            flush=True,
                        )
        report(runs, targets, list(variants))
        if args.json:
            args.json.write_text(json.dumps([{**asdict(r), "outputs": None} for r in runs], indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(runs: list[Run], targets: list[str], variants: list[str]) -> None:
    print()
    print(
        "| target | concurrency | variant | acceptance | drafts per token | tokens/s (median, min-max) | "
        "vs no draft | inter-token p50 / p90 (ms) | chunk gap p50 (ms) | greedy output identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for target in targets:
        for concurrency in (1, 16):
            group = [r for r in runs if r.target == target and r.concurrency == concurrency]
            baseline = [r for r in group if r.variant == variants[0]]
            for variant in variants:
                mine = [r for r in group if r.variant == variant]
                speeds = [r.tokens_per_second for r in mine]
                ratios = [
                    m.tokens_per_second / b.tokens_per_second for m, b in zip(mine, baseline, strict=True)
                ]
                gaps = [g for r in mine for g in r.token_gaps]
                chunks = [g for r in mine for g in r.chunk_gaps]
                same = sum(
                    a == b
                    for m, b in zip(mine, baseline, strict=True)
                    for a, b in zip(m.outputs, b.outputs, strict=True)
                )
                total = sum(len(m.outputs) for m in mine)
                acceptance = statistics.median(r.acceptance for r in mine)
                cells = [
                    target,
                    str(concurrency),
                    variant,
                    f"{acceptance:.2f}",
                    f"{statistics.median(r.proposed / r.generated for r in mine):.2f}",
                    f"{statistics.median(speeds):.1f} ({min(speeds):.1f}-{max(speeds):.1f})",
                    f"{statistics.median(ratios):.2f}x",
                    f"{percentile(gaps, 0.5) * 1e3:.1f} / {percentile(gaps, 0.9) * 1e3:.1f}",
                    f"{percentile(chunks, 0.5) * 1e3:.1f}",
                    f"{same}/{total}",
                ]
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
