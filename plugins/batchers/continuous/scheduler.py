"""Iteration-level scheduling: which sequences run in the next step, and how many tokens each feeds.

Every step has a token budget shared by prefill and decode. Sequences are taken priority class by
priority class (``ladle.Priority``); inside a class the running ones come first (oldest first), then
waiting ones join while the budget, the sequence cap and the cache allow. A prompt longer than what
is left of the budget is prefilled in chunks over several steps. When the cache runs out, the newest
running sequence of the lowest class is preempted: its blocks go back to the pool and it is recomputed
later (its cached prefix blocks usually survive, so recomputing is mostly cache hits). A waiting
sequence of a higher class may preempt running sequences of lower classes.

With a runtime that speculates (``StepRuntime.speculative_tokens()``), what the step leaves of its
budget and of the free blocks (beyond the watermark) goes to decoding sequences as a ``lookahead``
for draft tokens, oldest first; after the step the accepted drafts are committed and the blocks of the
rejected ones rolled back (``verified``). A guess never preempts anything: a sequence that finds no
room simply decodes one token. With ``adapt_lookahead``, a sequence whose last round kept no draft
asks for one draft only, and one whose rounds keep failing stops drafting for a while (4, 8, ... up
to 64 steps) before trying one again, so a draft that does not predict its target costs little; a
round that keeps any draft restores the runtime's most.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from ladle import BlockCopy, KVCacheManager, Priority, StepItem

from .sequence import Sequence, SequenceStatus

__all__ = ["Scheduler", "StepPlan"]

_LONGEST_PAUSE = 64  # steps a sequence whose drafts keep failing goes without drafting, at most


@dataclass
class StepPlan:
    """What one step runs: items in order, the sequences behind them, and block copies to make first."""

    items: list[StepItem] = field(default_factory=list)
    sequences: list[Sequence] = field(default_factory=list)
    copies: list[BlockCopy] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(item.tokens) for item in self.items)


class Scheduler:
    """Waiting lanes per priority class, the running set, and the cache's block tables."""

    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_seqs: int,
        max_batched_tokens: int,
        watermark_blocks: int = 0,
        lookahead: int = 0,
        lookahead_max_seqs: int | None = None,
        adapt_lookahead: bool = True,
    ) -> None:
        if max_num_seqs <= 0 or max_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_batched_tokens must be positive")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.watermark_blocks = watermark_blocks
        self.lookahead = max(0, lookahead)
        self.lookahead_max_seqs = lookahead_max_seqs
        self.adapt_lookahead = adapt_lookahead
        self.waiting: dict[Priority, deque[Sequence]] = {p: deque() for p in Priority}
        self.running: list[Sequence] = []  # kept sorted by Sequence.order
        self.preemptions = 0
        self.cached_tokens = 0  # prompt tokens found in the prefix cache at admission

    # membership ------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return sum(len(lane) for lane in self.waiting.values())

    @property
    def has_work(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting[seq.priority].append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            index = bisect.bisect_left(self.running, seq.order, key=lambda s: s.order)
            if index < len(self.running) and self.running[index] is seq:
                del self.running[index]
            else:
                self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            lane = self.waiting[seq.priority]
            if seq in lane:
                lane.remove(seq)
        self.kv.free(seq.id)
        seq.status = SequenceStatus.FINISHED

    def sequences(self) -> list[Sequence]:
        """Every sequence still in the scheduler, running ones first."""
        return [*self.running, *(s for p in Priority for s in self.waiting[p])]

    # scheduling ------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.max_batched_tokens
        scheduled: set[int] = set()
        for priority in Priority:
            for seq in [s for s in self.running if s.priority is priority]:
                if budget <= 0:
                    break
                if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this step
                    continue
                count = min(len(seq.tokens) - seq.computed, budget)
                if count <= 0:
                    continue
                copies = self._allocate(seq, seq.computed + count, scheduled, plan)
                if copies is None:
                    continue  # seq itself was preempted
                self._emit(plan, seq, count, copies)
                scheduled.add(seq.id)
                budget -= count
            budget = self._admit(priority, budget, scheduled, plan)
        if self.lookahead:
            self._speculate(plan, budget)
        return plan

    def _speculate(self, plan: StepPlan, budget: int) -> None:
        """Grant decoding items room for draft tokens from the budget and blocks the step left."""
        if self.lookahead_max_seqs is not None:
            decoding = sum(1 for item in plan.items if item.sample and len(item.tokens) == 1)
            if decoding > self.lookahead_max_seqs:
                return
        kv = self.kv
        size = kv.block_size
        for item, seq in zip(plan.items, plan.sequences, strict=True):
            if budget <= 0:
                break
            if not item.sample or len(item.tokens) != 1 or seq.status is not SequenceStatus.RUNNING:
                continue
            if seq.draft_pause > 0:
                seq.draft_pause -= 1
                continue
            spare = kv.pool.free_blocks - self.watermark_blocks
            room = (len(kv.block_table(seq.id)) + max(0, spare)) * size - item.start - 1
            wanted = self.lookahead if seq.draft_tokens < 0 or not self.adapt_lookahead else seq.draft_tokens
            # the target's own token always follows the drafts: never propose past max_tokens
            grant = min(wanted, budget, seq.max_tokens - seq.generated - 1, room)
            if grant <= 0:
                continue
            copies = kv.allocate(seq.id, item.start + 1 + grant)
            if copies is None:
                continue
            plan.copies.extend(copies)
            item.lookahead = grant
            budget -= grant

    def _admit(self, priority: Priority, budget: int, scheduled: set[int], plan: StepPlan) -> int:
        lane = self.waiting[priority]
        kv = self.kv
        while lane and budget > 0:
            seq = lane[0]
            if seq in plan.preempted:  # not back in the step it was preempted from
                break
            if len(self.running) >= self.max_num_seqs and not self._make_room(priority, scheduled, plan, 0):
                break
            _, blocks = kv.admission(seq.tokens, budget)
            if self.running:  # headroom for the running ones to grow; an idle engine takes anything that fits
                blocks += self.watermark_blocks
            if blocks > kv.pool.free_blocks and not self._make_room(priority, scheduled, plan, blocks):
                break
            computed = kv.admit(seq.id, seq.tokens)
            count = min(len(seq.tokens) - computed, budget)
            copies = kv.allocate(seq.id, computed + count)
            if copies is None:
                kv.free(seq.id)
                break
            lane.popleft()
            self.cached_tokens += computed
            seq.computed = computed
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.order)
            self._emit(plan, seq, count, copies)
            scheduled.add(seq.id)
            budget -= count
        return budget

    def _emit(self, plan: StepPlan, seq: Sequence, count: int, copies: list[BlockCopy]) -> None:
        start = seq.computed
        end = start + count
        plan.copies.extend(copies)
        plan.sequences.append(seq)
        plan.items.append(
            StepItem(
                seq.id,
                seq.tokens[start:end],
                start,
                self.kv.block_table(seq.id),
                end == len(seq.tokens),
                seq.params,
                seq.seed,
                seq.generated,
            )
        )

    def _allocate(
        self, seq: Sequence, end: int, scheduled: set[int], plan: StepPlan
    ) -> list[BlockCopy] | None:
        """Blocks for ``seq`` up to ``end``; if short, preempt the newest unscheduled ones (or ``seq``)."""
        while True:
            copies = self.kv.allocate(seq.id, end)
            if copies is not None:
                return copies
            victim = self._victim(scheduled, below=None)
            if victim is None or victim is seq:
                self._preempt(seq, plan)
                return None
            self._preempt(victim, plan)

    def _make_room(self, priority: Priority, scheduled: set[int], plan: StepPlan, blocks: int) -> bool:
        """Preempt running sequences of lower classes until ``blocks`` are free and a slot is open."""
        while len(self.running) >= self.max_num_seqs or self.kv.pool.free_blocks < blocks:
            victim = self._victim(scheduled, below=priority)
            if victim is None:
                return False
            self._preempt(victim, plan)
        return True

    def _victim(self, scheduled: set[int], below: Priority | None) -> Sequence | None:
        """The newest running sequence of the lowest class not yet in this step (only below ``below``)."""
        for seq in reversed(self.running):
            if below is not None and seq.priority <= below:
                return None
            if seq.id not in scheduled:
                return seq
        return None

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        self.running.remove(seq)
        self.kv.free(seq.id)
        seq.computed = 0
        seq.preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting[seq.priority].appendleft(seq)
        self.preemptions += 1
        plan.preempted.append(seq)

    # after the step --------------------------------------------------------------------------

    def computed(self, plan: StepPlan) -> None:
        """Record that every item of ``plan`` was computed (before tokens are appended)."""
        kv = self.kv
        for item, seq in zip(plan.items, plan.sequences, strict=True):
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.computed = item.start + len(item.tokens)
            kv.commit(seq.id, seq.tokens, seq.computed)

    def verified(self, seq: Sequence, item: StepItem, produced: int) -> None:
        """After a step that granted ``item`` a lookahead and appended the ``produced`` tokens: the
        ``produced - 1`` accepted drafts are in the cache; blocks past them go back to the pool."""
        if seq.status is not SequenceStatus.RUNNING:
            return
        accepted = min(max(0, produced - 1), item.lookahead)
        seq.computed = item.start + len(item.tokens) + accepted
        self.kv.commit(seq.id, seq.tokens, seq.computed)
        self.kv.rollback(seq.id, seq.computed)
        if not self.adapt_lookahead:
            return
        if accepted:
            seq.draft_misses = 0
            seq.draft_tokens = self.lookahead
        else:
            seq.draft_misses += 1
            seq.draft_tokens = 1
            if seq.draft_misses >= 2:
                seq.draft_pause = min(_LONGEST_PAUSE, 2**seq.draft_misses)
