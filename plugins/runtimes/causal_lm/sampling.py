"""Choosing tokens from logits: greedy, seeded draws under temperature, top-k and top-p, and the
accept/reject rule of speculative decoding.

Every draw is seeded from the request's seed, the index of the token it decides and what it is for
(a token, a draft token, an acceptance test, a resampling), never from a shared random state, so a
sequence's tokens do not depend on what else runs in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ladle import SamplingParams

__all__ = ["accept_greedy", "accept_sampled", "draw", "mix", "probabilities", "sample_rows"]

# Distinct seed streams per purpose, so a draft token, its acceptance test and a resampling at the
# same index never share a seed with each other or with the plain draw.
DRAFT_STREAM = 0x5DEECE66D
ACCEPT_STREAM = 0x2545F4914F6CDD1D
RESIDUAL_STREAM = 0x9E3779B185EBCA87
_MASK = 0xFFFFFFFFFFFFFFFF


def mix(seed: int, index: int, stream: int = 0) -> int:
    """A per-draw seed from the request seed, the token's index and a stream (splitmix64 finaliser)."""
    z = ((seed ^ stream) * 0x9E3779B97F4A7C15 + index + 1) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def uniform(seed: int, index: int, stream: int) -> float:
    """A number in ``[0, 1)`` from a per-draw seed (53 bits, as ``random.random`` has)."""
    return (mix(seed, index, stream) >> 10) / float(1 << 53)


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``params`` samples from, for one row of logits (float32)."""
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.shape[0]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    result = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        ordered, indices = torch.sort(result, descending=True)
        cumulative = torch.cumsum(ordered, dim=-1)
        drop = cumulative - ordered >= params.top_p  # keep the smallest prefix reaching top_p
        ordered = ordered.masked_fill(drop, 0.0)
        result = torch.zeros_like(result).scatter_(0, indices, ordered)
    return result


def draw(weights: torch.Tensor, seed: int, generator: torch.Generator) -> int:
    """One token from (unnormalised) ``weights``, reproducibly from ``seed``."""
    generator.manual_seed(seed)
    return int(torch.multinomial(weights, 1, generator=generator).item())


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    seeds: Sequence[int],
    indices: Sequence[int],
    generator: torch.Generator,
) -> list[int]:
    """One token per row: the argmax for greedy rows, else a draw seeded by ``(seed, index)``."""
    if not params:
        return []
    chosen: list[int] = logits.argmax(dim=-1).tolist()
    for row, row_params in enumerate(params):
        if not row_params.greedy:
            weights = probabilities(logits[row], row_params)
            chosen[row] = draw(weights, mix(seeds[row], indices[row]), generator)
    return chosen


def accept_greedy(target_best: Sequence[int], proposed: Sequence[int]) -> list[int]:
    """Greedy verification: drafts are kept while they equal the target's argmax at their position,
    then the target's own token follows (the correction, or a bonus token when all were kept).
    ``target_best`` has one entry more than ``proposed``."""
    kept: list[int] = []
    for token, best in zip(proposed, target_best, strict=False):
        if token != best:
            break
        kept.append(token)
    kept.append(target_best[len(kept)])
    return kept


def accept_sampled(
    target: torch.Tensor,
    draft: torch.Tensor,
    proposed: Sequence[int],
    seed: int,
    index: int,
    generator: torch.Generator,
) -> list[int]:
    """Speculative sampling: keeps the target's distribution whatever the draft proposed.

    ``target`` holds the target's probabilities at each proposed position and one more
    (``[len(proposed) + 1, vocab]``); ``draft`` the probabilities each draft token was drawn from
    (``[len(proposed), draft_vocab]``, ``draft_vocab <= vocab``). Draft token ``x`` is accepted with
    probability ``min(1, p(x) / q(x))``; at the first rejection a token is drawn from
    ``max(0, p - q)`` normalised and the round ends; when every draft is accepted, a bonus token is
    drawn from the last target row. ``index`` is the output index of the first proposed token.
    """
    kept: list[int] = []
    vocab = target.shape[1]
    for position, token in enumerate(proposed):
        p, q = target[position], draft[position]
        # accept when u < p/q, written without dividing (q(x) > 0: x was drawn from q)
        if uniform(seed, index + position, ACCEPT_STREAM) * float(q[token]) < float(p[token]):
            kept.append(token)
            continue
        residual = p.clone()
        residual[: q.shape[0]] -= q[:vocab]
        residual.clamp_(min=0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: the rejection had no mass
            residual = p
        kept.append(draw(residual, mix(seed, index + position, RESIDUAL_STREAM), generator))
        return kept
    kept.append(draw(target[len(proposed)], mix(seed, index + len(proposed)), generator))
    return kept
