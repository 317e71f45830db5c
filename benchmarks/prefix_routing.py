"""Prefix-aware replica choice, side by side with least-loaded choice, for generation.

One random-weight Llama-style model served by ``--instances`` instances (engines with a KV cache
each). Every request starts with one of ``--prompts`` system prompts of ~170 tokens (one by default:
a prompt all requests share) and adds a short question of its own; ``--requests`` of them arrive in
waves of ``--wave`` at once. With ``prefix_aware = true`` a request goes to the
instance that already caches the system prompt (unless it is much busier); with ``false`` to the
least loaded instance, so the prefix is computed on both caches and a request often lands where it
is not. Reported: time to first token (median and p90 over the requests) and the prompt tokens found
in the prefix cache. The two settings alternate within each repetition; medians over repetitions.

    python benchmarks/prefix_routing.py [--repeats 5] [--requests 64] [--wave 8]
    python benchmarks/prefix_routing.py --prompts 8 --instances 2 --kv-cache 2MiB  # tenants, small caches
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from ladle import GenerationPayload, InferenceRequest, SamplingParams
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint

SYSTEM = ("You are a careful assistant. Answer briefly, cite nothing you cannot check, and say when you "
          "do not know. ") * 4  # fmt: skip


async def _wave(server: Server, prompts: list[str]) -> list[float]:
    async def one(prompt: str) -> float:
        payload = GenerationPayload(prompt=prompt, sampling=SamplingParams(max_tokens=4))
        start = time.perf_counter()
        stream = server.manager.admission.stream(InferenceRequest("chat", {}, generation=payload))
        async for _ in stream:
            return time.perf_counter() - start
        return time.perf_counter() - start

    return list(await asyncio.gather(*(one(p) for p in prompts)))


async def _run(repo: Path, prefix_aware: bool, args: argparse.Namespace) -> tuple[list[float], float]:
    batcher = {"name": "continuous", "prefix_aware": prefix_aware}
    options = {"kv_cache_bytes": args.kv_cache} if args.kv_cache else {}
    model = {"instances": args.instances, "batcher": batcher, "options": options}
    config = ServerConfig.model_validate(
        {"server": {"repository": str(repo)}, "models": {"chat": model}, "telemetry": {"enabled": False}}
    )
    server = Server(config)
    await server.start()
    try:
        ttft: list[float] = []
        systems = [f"tenant {t}. " + SYSTEM for t in range(args.prompts)]
        prompts = [systems[i % args.prompts] + f"question number {i}?" for i in range(args.requests)]
        for start in range(0, args.requests, args.wave):
            ttft.extend(await _wave(server, prompts[start : start + args.wave]))
        engines = server.manager.models["chat"].versions["1"].batcher.stats()  # type: ignore[attr-defined]
        cached = sum(e["cached_prompt_tokens"] for e in engines)
        computed = sum(e["prefill_tokens"] for e in engines)
        return ttft, cached / max(1, cached + computed)
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--wave", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=1, help="distinct system prompts (tenants)")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument(
        "--kv-cache", default="", help="KV cache per instance, e.g. 2MiB (default: the runtime's)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        write_checkpoint(repo / "chat" / "1", llama_config(max_position_embeddings=1024))
        results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for rep in range(args.repeats):
            for aware in (True, False) if rep % 2 == 0 else (False, True):
                ttft, hit = asyncio.run(_run(repo, aware, args))
                ttft.sort()
                results[aware].append((statistics.median(ttft), ttft[int(0.9 * (len(ttft) - 1))], hit))
    print(
        f"\n{args.requests} requests in waves of {args.wave} over {args.instances} instances, "
        f"{args.prompts} system prompt(s), {args.repeats} repetitions"
    )
    print(f"{'choice':>14} | {'TTFT p50 ms':>12} | {'TTFT p90 ms':>12} | {'prefix cache hits':>17}")
    figures = {}
    for aware, label in ((True, "prefix-aware"), (False, "least-loaded")):
        p50 = statistics.median(r[0] for r in results[aware]) * 1e3
        p90 = statistics.median(r[1] for r in results[aware]) * 1e3
        hit = statistics.median(r[2] for r in results[aware])
        figures[aware] = (p50, p90)
        print(f"{label:>14} | {p50:12.1f} | {p90:12.1f} | {hit:17.0%}")
    print(
        f"\nprefix-aware / least-loaded: TTFT p50 {figures[True][0] / figures[False][0]:.2f}x, "
        f"p90 {figures[True][1] / figures[False][1]:.2f}x (below 1x is better)"
    )


if __name__ == "__main__":
    main()
