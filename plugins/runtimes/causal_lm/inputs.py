"""One forward pass's flat batch, built from what each sequence feeds it.

A ``Feed`` is one sequence's tokens at positions ``start ..`` with its block table and the number
of trailing tokens whose logits are wanted. Short feeds that continue a sequence (a decoded token;
a token and the draft tokens verified with it) attend in decode groups of equal token counts and
similar context lengths, gathering K/V by block table into one padded batch per group
(``grouping.length_groups`` picks the split); longer ones (prompt chunks) attend one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .grouping import length_groups
from .model import CausalLM, DecodeGroup, Prefill, StepInputs

__all__ = ["Feed", "build_inputs"]

# The fixed cost of one more decode attention group, in gathered K/V elements per layer (measured on
# CPU: one gather pair and one attention call cost about as much as moving this many elements).
GROUP_OVERHEAD_ELEMENTS = 32768


@dataclass(slots=True)
class Feed:
    """Tokens of one sequence at positions ``start ..``; logits wanted for the last ``rows``."""

    tokens: Sequence[int]
    start: int
    block_table: Sequence[int]
    rows: int = 0


def _tensor(array: np.ndarray[Any, Any], model: CausalLM) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor if model.device.type == "cpu" else tensor.to(model.device, non_blocking=True)


def build_inputs(
    model: CausalLM, feeds: Sequence[Feed], max_queries: int = 1
) -> tuple[StepInputs, list[int]]:
    """The flat batch of ``feeds`` and, per feed, the index of its first logits row (``-1``: none).

    Feeds of at most ``max_queries`` tokens that continue a sequence go into decode groups; a feed's
    logits rows are consecutive, in feed order.
    """
    size = model.block_size
    decode = [
        i for i, f in enumerate(feeds) if len(f.tokens) == 1 or (f.start and len(f.tokens) <= max_queries)
    ]
    chosen = set(decode)
    prefill = [i for i in range(len(feeds)) if i not in chosen]
    ids: list[int] = []
    positions: list[np.ndarray[Any, Any]] = []
    writes: list[np.ndarray[Any, Any]] = []
    wanted: list[tuple[int, int]] = []  # (feed, row of the flat batch)
    offsets = np.arange(size, dtype=np.int64)
    inputs = StepInputs(
        input_ids=torch.empty(0),
        positions=torch.empty(0),
        write_slots=torch.empty(0),
        sample_rows=torch.empty(0),
    )
    decode.sort(key=lambda i: (len(feeds[i].tokens), feeds[i].start))
    row = 0
    first = 0
    while first < len(decode):
        queries = len(feeds[decode[first]].tokens)
        stop = first
        while stop < len(decode) and len(feeds[decode[stop]].tokens) == queries:
            stop += 1
        row = _decode_run(model, feeds, decode[first:stop], queries, row, inputs, ids, positions, writes)
        first = stop
    inputs.decodes = row
    end = 0
    for i in decode:  # laid out in this order, each feed's tokens on consecutive rows
        feed = feeds[i]
        end += len(feed.tokens)
        wanted.extend((i, r) for r in range(end - feed.rows, end))
    offset = row
    for i in prefill:
        feed = feeds[i]
        count = len(feed.tokens)
        start = feed.start
        end = start + count
        blocks = np.asarray(feed.block_table[: -(-end // size)], dtype=np.int64)
        slots = (blocks[:, None] * size + offsets).ravel()[:end]
        ids.extend(feed.tokens)
        positions.append(np.arange(start, end, dtype=np.int64))
        writes.append(slots[start:])
        kv_index: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if start:
            kv_index = _tensor(slots, model)
            causal = np.arange(end)[None, :] <= np.arange(start, end)[:, None]
            mask = _tensor(causal, model)
        inputs.prefills.append(Prefill(offset, count, start, kv_index, mask))
        offset += count
        wanted.extend((i, r) for r in range(offset - feed.rows, offset))
    wanted.sort()
    first_rows = [-1] * len(feeds)
    for index, (i, _) in enumerate(wanted):
        if first_rows[i] < 0:
            first_rows[i] = index
    inputs.input_ids = _tensor(np.asarray(ids, dtype=np.int64), model)
    inputs.positions = _tensor(np.concatenate(positions), model)
    inputs.write_slots = _tensor(np.concatenate(writes), model)
    inputs.sample_rows = _tensor(np.asarray([r for _, r in wanted], dtype=np.int64), model)
    return inputs, first_rows


def _decode_run(
    model: CausalLM,
    feeds: Sequence[Feed],
    run: list[int],
    queries: int,
    row: int,
    inputs: StepInputs,
    ids: list[int],
    positions: list[np.ndarray[Any, Any]],
    writes: list[np.ndarray[Any, Any]],
) -> int:
    """Lay out decode feeds of ``queries`` tokens each (ascending starts) from flat row ``row``."""
    size = model.block_size
    offsets = np.arange(size, dtype=np.int64)
    starts = np.fromiter((feeds[i].start for i in run), dtype=np.int64, count=len(run))
    lengths = starts + queries
    width = int(-(-lengths[-1] // size))
    table = np.zeros((len(run), width), dtype=np.int64)
    for n, i in enumerate(run):
        blocks = feeds[i].block_table
        used = min(width, len(blocks))
        table[n, :used] = blocks[:used]
        ids.extend(feeds[i].tokens)
    slots = (table[:, :, None] * size + offsets).reshape(len(run), -1)
    steps = np.arange(queries, dtype=np.int64)
    fed = starts[:, None] + steps[None, :]  # [sequences, queries] positions
    positions.append(fed.ravel())
    writes.append(np.take_along_axis(slots, fed, axis=1).ravel())
    args = model.args
    heads_per_kv = args.num_heads // args.num_kv_heads
    overhead = GROUP_OVERHEAD_ELEMENTS / (args.num_kv_heads * args.head_dim)
    for first, stop in length_groups(lengths.tolist(), overhead):
        length = int(lengths[stop - 1])
        index = _tensor(np.ascontiguousarray(slots[first:stop, :length]).ravel(), model)
        mask: torch.Tensor | None = None  # which slot each query may read, where some may not
        if queries > 1 or lengths[first] != length:
            allowed = np.arange(length)[None, None, :] <= fed[first:stop, :, None]
            allowed = np.repeat(allowed, heads_per_kv, axis=1) if queries > 1 else allowed
            mask = _tensor(np.ascontiguousarray(allowed), model).view(
                stop - first, 1, allowed.shape[1], length
            )
        group = DecodeGroup(row + first * queries, stop - first, length, index, mask, queries)
        inputs.decode_groups.append(group)
    return row + len(run) * queries
