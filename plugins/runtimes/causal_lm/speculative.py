"""Speculative decoding inside one step: a draft model proposes, the target verifies.

The draft is a second (smaller) checkpoint with the same tokenizer, loaded beside the target. Its K/V
cache mirrors the target's block for block: the same block tables address both, so the batcher
manages one set of blocks, and copy-on-write copies both caches. The draft catches up lazily: for a
sequence that does not draft in a step (a prompt chunk, a paused sequence, a step with too many
sequences to speculate) it runs nothing and only remembers the tokens it has not fed; when the
sequence next drafts, its first draft pass feeds them all. A step runs:

1. one draft pass over the items with a lookahead, each feeding what its draft has not seen up to
   and including the token the target feeds, proposing its first draft token;
2. ``lookahead - 1`` more draft passes of one token per item, each proposing the next;
3. one target pass where each such item feeds its token and its drafts (one decode group of
   several queries per sequence), with logits at every position;
4. per item, greedy verification (drafts kept while they equal the target's argmax) or speculative
   sampling (``sampling.accept_sampled``), which returns the kept drafts plus one target token.

Greedy output is therefore the target's own greedy output, token for token, whatever the draft
proposes; sampled output follows the target's distribution. A token's position never changes, so the
draft writing it late (into a block another sequence now shares, say) writes what that block should
hold; and the draft reading a position it never computed (a prefix block registered by a sequence
that never drafted) only makes its proposals worse, never the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ladle import StepItem

from .inputs import Feed, build_inputs
from .model import CausalLM
from .sampling import DRAFT_STREAM, accept_greedy, accept_sampled, draw, mix, probabilities, sample_rows

__all__ = ["Speculator"]


class Speculator:
    """A draft model proposing ``num_tokens`` per decoding sequence, and its per-sequence state."""

    def __init__(self, draft: CausalLM, num_tokens: int, target_vocab: int) -> None:
        self.model = draft
        self.num_tokens = num_tokens
        self.vocab = min(draft.args.vocab_size, target_vocab)  # tokens both models embed
        self._draft_vocab = draft.args.vocab_size
        #: seq_id -> (position, tokens): the draft's cache is valid before ``position`` and lacks
        #: ``tokens`` from there on
        self._behind: dict[int, tuple[int, list[int]]] = {}

    def release(self, seq_id: int) -> None:
        self._behind.pop(seq_id, None)

    def _fed(self, tokens: Sequence[int]) -> Sequence[int]:
        """Tokens as the draft can embed them (a target token past the draft's table would fail)."""
        if self._draft_vocab >= self.vocab and all(t < self._draft_vocab for t in tokens):
            return tokens
        return [min(t, self._draft_vocab - 1) for t in tokens]

    def step(
        self, target: CausalLM, items: Sequence[StepItem], generator: torch.Generator
    ) -> list[list[int]]:
        """Run ``items`` and verify the drafts of those with a lookahead; per item, the tokens it
        produced."""
        ahead = [item.lookahead if item.sample else 0 for item in items]
        speculating = [i for i, n in enumerate(ahead) if n]
        proposed: dict[int, list[int]] = {i: [] for i in speculating}
        drawn_from: dict[int, list[torch.Tensor]] = {i: [] for i in speculating}

        feeds = []
        for i, item in enumerate(items):
            start, unseen = self._unseen(item)
            if ahead[i]:
                feeds.append(Feed(self._fed(unseen), start, item.block_table, 1))
            else:
                self._behind[item.seq_id] = (start, unseen)
        if feeds:
            inputs, rows = build_inputs(self.model, feeds, max_queries=2)
            logits = self.model.forward(inputs)
            self._propose(
                logits, [(i, n) for n, i in enumerate(speculating)], items, proposed, drawn_from, generator
            )
        for depth in range(1, max(ahead, default=0)):
            active = [i for i in speculating if ahead[i] > depth]
            feeds = [
                Feed(self._fed(proposed[i][-1:]), items[i].start + depth, items[i].block_table, 1)
                for i in active
            ]
            logits = self.model.forward(build_inputs(self.model, feeds)[0])
            self._propose(
                logits,
                list(zip(active, range(len(active)), strict=True)),
                items,
                proposed,
                drawn_from,
                generator,
            )

        feeds = [
            Feed([*item.tokens, *proposed[i]], item.start, item.block_table, 1 + ahead[i])
            if ahead[i]
            else Feed(item.tokens, item.start, item.block_table, 1 if item.sample else 0)
            for i, item in enumerate(items)
        ]
        inputs, rows = build_inputs(target, feeds, max_queries=1 + self.num_tokens)
        logits = target.forward(inputs)
        best: list[int] = logits.argmax(dim=-1).tolist()
        results: list[list[int]] = [[] for _ in items]
        plain = [i for i, item in enumerate(items) if rows[i] >= 0 and not ahead[i]]
        for i, token in zip(
            plain,
            sample_rows(
                logits[[rows[i] for i in plain]] if plain else logits[:0],
                [items[i].params for i in plain],
                [items[i].seed for i in plain],
                [items[i].output_index for i in plain],
                generator,
            ),
            strict=True,
        ):
            results[i] = [token]
        for i in speculating:
            item, first, n = items[i], rows[i], ahead[i]
            if item.params.greedy:
                kept = accept_greedy(best[first : first + n + 1], proposed[i])
            else:
                target_p = torch.stack([probabilities(logits[first + j], item.params) for j in range(n + 1)])
                kept = accept_sampled(
                    target_p, torch.stack(drawn_from[i]), proposed[i], item.seed, item.output_index, generator
                )
            results[i] = kept
            if len(kept) == n + 1:  # every draft kept: the draft never fed the last one
                self._behind[item.seq_id] = (item.start + n, proposed[i][-1:])
            else:
                self._behind[item.seq_id] = (item.start + len(kept), [])
        return results

    def _unseen(self, item: StepItem) -> tuple[int, list[int]]:
        """Where the draft must start feeding for ``item``, and the tokens from there through the
        item's own."""
        position, pending = self._behind.pop(item.seq_id, (item.start, []))
        # behind where the draft is (recomputed after a preemption): it holds all before it; past what
        # it lacks (the rest was found in the prefix cache): it takes the cached blocks as they are
        if item.start < position or item.start > position + len(pending):
            position, pending = item.start, []
        return position, [*pending[: item.start - position], *item.tokens]

    def _propose(
        self,
        logits: torch.Tensor,
        rows: list[tuple[int, int]],
        items: Sequence[StepItem],
        proposed: dict[int, list[int]],
        drawn_from: dict[int, list[torch.Tensor]],
        generator: torch.Generator,
    ) -> None:
        """Append each item's next draft token (and, when sampling, the distribution it came from)."""
        if not rows:
            return
        logits = logits[:, : self.vocab]
        best: list[int] = logits.argmax(dim=-1).tolist()
        for i, row in rows:
            item = items[i]
            if item.params.greedy:
                proposed[i].append(best[row])
                continue
            q = probabilities(logits[row], item.params)
            index = item.output_index + len(proposed[i])
            proposed[i].append(draw(q, mix(item.seed, index, DRAFT_STREAM), generator))
            drawn_from[i].append(q)
