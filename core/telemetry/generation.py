"""Gauges of a generative version (continuous batching), read from its batcher at collection time.

The engine keeps its own counters; nothing is recorded per token. One read of ``batcher.stats()``
serves every gauge of a collection (it takes the engine's lock, so it is not repeated per gauge).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .families import version_attributes
from .stats import StatsRegistry

if TYPE_CHECKING:
    from ..batching import Batcher

__all__ = ["GENERATION_GAUGES", "register_generation_gauges"]

#: gauge name -> (unit, description, reader of the summed engine figures)
GENERATION_GAUGES: dict[str, tuple[str, str, Callable[[Mapping[str, float]], float]]] = {
    "ladle.generation.kv_cache.usage": (
        "1",
        "share of KV-cache blocks in use",
        lambda s: 1.0 - s["free_blocks"] / s["num_blocks"] if s["num_blocks"] else 0.0,
    ),
    "ladle.generation.sequences.running": (
        "{sequence}",
        "sequences in the running batch",
        lambda s: s["running"],
    ),
    "ladle.generation.sequences.waiting": ("{sequence}", "sequences waiting to join", lambda s: s["waiting"]),
    "ladle.generation.tokens.generated": (
        "{token}",
        "tokens generated since start",
        lambda s: s["generated_tokens"],
    ),
    "ladle.generation.prefix_cache.hit_ratio": (
        "1",
        "share of prompt tokens found in the prefix cache instead of computed",
        lambda s: (
            s["cached_prompt_tokens"] / (s["cached_prompt_tokens"] + s["prefill_tokens"])
            if s["cached_prompt_tokens"] + s["prefill_tokens"]
            else 0.0
        ),
    ),
    "ladle.generation.prefix_routing.hit_ratio": (
        "1",
        "share of generations sent to the instance that held a prefix of their prompt",
        lambda s: s["prefix_routed"] / s["routed"] if s["routed"] else 0.0,
    ),
    "ladle.generation.preemptions": (
        "{preemption}",
        "sequences preempted since start",
        lambda s: s["preemptions"],
    ),
    "ladle.generation.speculative.proposed": (
        "{token}",
        "draft tokens proposed since start (speculative decoding)",
        lambda s: s["draft_proposed"],
    ),
    "ladle.generation.speculative.accepted": (
        "{token}",
        "draft tokens the target accepted since start",
        lambda s: s["draft_accepted"],
    ),
    "ladle.generation.speculative.acceptance_rate": (
        "1",
        "share of proposed draft tokens the target accepted",
        lambda s: s["draft_accepted"] / s["draft_proposed"] if s["draft_proposed"] else 0.0,
    ),
}
_FIELDS = (
    "free_blocks",
    "num_blocks",
    "running",
    "waiting",
    "generated_tokens",
    "preemptions",
    "cached_prompt_tokens",
    "prefill_tokens",
    "routed",
    "prefix_routed",
    "draft_proposed",
    "draft_accepted",
)


def register_generation_gauges(stats: StatsRegistry, model: str, version: str, batcher: Batcher) -> bool:
    """Register the gauges and latency histograms of a batcher that ``streams`` (its ``stats()`` and
    its ``timing`` sink, fed once per step); returns whether it did."""
    if not batcher.streams:
        return False
    read = batcher.stats
    ttft = stats.histogram_family(
        "ladle.generation.time_to_first_token", "s", "time from arrival to the first generated token"
    )
    itl = stats.histogram_family("ladle.generation.inter_token_latency", "s", "time between generated tokens")

    def timing(first: list[float], gaps: list[float]) -> None:
        now = time.monotonic()
        ttft.record(model, version, first, now)
        itl.record(model, version, gaps, now)

    batcher.timing = timing
    cache: dict[str, Any] = {"at": -1.0, "sums": {}}

    def sums() -> Mapping[str, float]:
        now = time.monotonic()
        if now - cache["at"] > 0.5:
            engines = read()
            cache["sums"] = {field: float(sum(e.get(field, 0) for e in engines)) for field in _FIELDS}
            cache["at"] = now
        result: Mapping[str, float] = cache["sums"]
        return result

    key = version_attributes(model, version)
    for name, (unit, description, pick) in GENERATION_GAUGES.items():
        family = stats.gauge_family(name, unit, description)
        family.register(key, lambda pick=pick: pick(sums()))  # type: ignore[misc]
    return True
