"""Paged KV-cache bookkeeping: fixed-size blocks, block tables, a free pool, prefix sharing.

The runtime owns the tensors (one region of ``block_size`` token positions per block, for every
layer's K and V); this module only decides which block holds which token. Nothing here imports an
ML framework, so a batcher and a runtime share it without importing each other.

* A ``BlockPool`` holds ``num_blocks`` blocks (sized from a memory budget by ``blocks_for_budget``),
  each with a reference count.
* A full block may be *registered* under the hash of its tokens and of every token before it
  (``hash_block`` chains the hashes). A registered block is immutable and can be shared by any
  sequence whose prefix hashes the same, so a repeated system prompt is computed once. When its last
  user leaves it stays findable until the pool needs the space (least recently used first).
* A ``KVCacheManager`` keeps one block table per sequence and hands the runtime the block copies it
  must make before a step writes into a block that is shared or registered (copy-on-write).

A runtime that cannot page its cache gets per-sequence slots from the same classes: a pool whose
``block_size`` is the model's context length and no prefix caching, so a block table is one slot.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BlockCopy",
    "BlockHash",
    "BlockPool",
    "KVCacheManager",
    "SequenceBlocks",
    "blocks_for_budget",
    "hash_block",
]

BlockHash = bytes
#: ``(source, destination)``: the runtime copies every layer's K and V of one block into another.
BlockCopy = tuple[int, int]


def hash_block(parent: BlockHash | None, tokens: Sequence[int]) -> BlockHash:
    """The identity of a full block: its tokens and (through ``parent``) every token before them.

    A cryptographic digest rather than ``hash()``: a collision would let one request read another's
    cache, and 64-bit tuple hashes can be collided on purpose.
    """
    digest = hashlib.blake2b(parent or b"", digest_size=16)
    digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return digest.digest()


def blocks_for_budget(budget_bytes: int, block_size: int, bytes_per_token: int) -> int:
    """How many blocks of ``block_size`` tokens fit in ``budget_bytes``.

    ``bytes_per_token`` covers one token's K and V in every layer.
    """
    if block_size <= 0 or bytes_per_token <= 0:
        raise ValueError("block_size and bytes_per_token must be positive")
    return max(0, budget_bytes // (block_size * bytes_per_token))


class BlockPool:
    """Fixed-size blocks with reference counts and a hash index of registered (immutable) full blocks.

    ``free_blocks`` counts blocks nobody uses: never-used ones plus cached ones kept for prefix hits;
    ``allocate`` takes the former first, then evicts the least recently released cached block.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"a block pool needs at least one block, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs = [0] * num_blocks
        self._hash: list[BlockHash | None] = [None] * num_blocks
        self._filled = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: low ids first
        self._cached: OrderedDict[int, None] = OrderedDict()  # unreferenced registered blocks, LRU first
        self._index: dict[BlockHash, int] = {}
        self._in_use = 0
        self._written = 0  # token slots written in blocks in use

    # queries -------------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        """Blocks that ``allocate`` can hand out now (unused, including evictable cached ones)."""
        return len(self._free) + len(self._cached)

    @property
    def used_blocks(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self._in_use

    @property
    def cached_blocks(self) -> int:
        """Unreferenced blocks kept for prefix hits."""
        return len(self._cached)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def is_registered(self, block: int) -> bool:
        return self._hash[block] is not None

    def usage(self) -> tuple[int, int]:
        """``(token slots written, token slots in blocks in use)``: their ratio is the cache's utilisation."""
        return self._written, self._in_use * self.block_size

    # allocation ------------------------------------------------------------------------------

    def allocate(self) -> int:
        """A fresh, empty block with one reference; raises ``MemoryError`` when none is free."""
        if self._free:
            block = self._free.pop()
        elif self._cached:
            block, _ = self._cached.popitem(last=False)
            self._forget(block)
            self._filled[block] = 0
        else:
            raise MemoryError("no free KV-cache block")
        self._refs[block] = 1
        self._in_use += 1
        return block

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The registered block with this hash, if the pool still holds one."""
        return self._index.get(block_hash)

    def share(self, block: int) -> None:
        """Add a reference (a prefix hit or a fork); revives a cached block."""
        if self._refs[block] == 0:
            if block not in self._cached:
                raise ValueError(f"block {block} is free and holds nothing to share")
            del self._cached[block]
            self._in_use += 1
            self._written += self._filled[block]
        self._refs[block] += 1

    def release(self, block: int) -> None:
        """Drop a reference; at zero the block is free again (kept findable if registered)."""
        refs = self._refs[block]
        if refs <= 0:
            raise ValueError(f"block {block} released more often than it was taken")
        self._refs[block] = refs - 1
        if refs == 1:
            self._in_use -= 1
            self._written -= self._filled[block]
            if self._hash[block] is not None:
                self._cached[block] = None
            else:
                self._filled[block] = 0
                self._free.append(block)

    def register(self, block: int, block_hash: BlockHash) -> bool:
        """Make a full block findable by ``block_hash`` (and immutable); ``False`` if another block has it."""
        if self._hash[block] is not None:
            return self._hash[block] == block_hash
        if block_hash in self._index:
            return False
        self._hash[block] = block_hash
        self._index[block_hash] = block
        return True

    def mark_written(self, block: int, slots: int) -> None:
        """Record that the first ``slots`` token positions of a block in use hold data."""
        before = self._filled[block]
        if slots > before:
            self._filled[block] = slots
            self._written += slots - before

    def written(self, block: int) -> int:
        return self._filled[block]

    def unwrite(self, block: int, slots: int) -> None:
        """Record that only the first ``slots`` token positions of a private, unregistered block hold
        data (a sequence rolled back); a shared or registered block keeps its mark, since others
        still read what it holds."""
        before = self._filled[block]
        if slots < before and self._refs[block] == 1 and self._hash[block] is None:
            self._filled[block] = max(0, slots)
            self._written -= before - self._filled[block]

    def _forget(self, block: int) -> None:
        block_hash = self._hash[block]
        if block_hash is not None:
            del self._index[block_hash]
            self._hash[block] = None


@dataclass
class SequenceBlocks:
    """One sequence's block table plus the hashes of its registered full blocks, in order."""

    blocks: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    computed: int = 0


class KVCacheManager:
    """Block tables per sequence over one ``BlockPool``; every operation is all-or-nothing.

    The scheduler calls ``admit`` when a sequence starts (or restarts after preemption): it takes the
    cached blocks of the longest known prefix and returns how many tokens need no computing. Before
    each step it calls ``allocate(seq, end)`` for the tokens the step writes and passes the returned
    copies to the runtime; after the step, ``commit`` records what was computed and registers newly
    full blocks. A step may write past what it commits (speculative decoding writes draft tokens the
    target then rejects): ``rollback`` releases the blocks beyond the committed length. ``free``
    gives everything back.
    """

    def __init__(self, pool: BlockPool, *, prefix_caching: bool = True) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self.prefix_caching = prefix_caching
        self._seqs: dict[int, SequenceBlocks] = {}

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def block_table(self, seq_id: int) -> list[int]:
        """The sequence's blocks in order (a live list: do not modify it)."""
        return self._seqs[seq_id].blocks

    def blocks_needed(self, seq_id: int | None, end: int) -> int:
        """New blocks that holding ``end`` tokens would take (an unknown sequence starts from none)."""
        have = len(self._seqs[seq_id].blocks) if seq_id is not None and seq_id in self._seqs else 0
        return max(0, -(-end // self.block_size) - have)

    def prefix_hashes(self, tokens: Sequence[int]) -> list[BlockHash]:
        """Chained hashes of every full block of ``tokens``."""
        size = self.block_size
        hashes: list[BlockHash] = []
        parent: BlockHash | None = None
        for start in range(0, len(tokens) - size + 1, size):
            parent = hash_block(parent, tokens[start : start + size])
            hashes.append(parent)
        return hashes

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """Tokens of ``tokens`` whose K/V the pool holds in registered blocks (whole blocks only)."""
        if not self.prefix_caching:
            return 0
        found = 0
        for block_hash in self.prefix_hashes(tokens):
            if self.pool.lookup(block_hash) is None:
                break
            found += self.block_size
        return found

    def admission(self, tokens: Sequence[int], count: int) -> tuple[int, int]:
        """What ``admit`` and then computing up to ``count`` more tokens would take, without doing it:
        ``(tokens found cached, blocks taken from the free pool)``."""
        size = self.block_size
        matched = revived = 0
        if self.prefix_caching:
            for block_hash in self.prefix_hashes(tokens):
                block = self.pool.lookup(block_hash)
                if block is None:
                    break
                matched += 1
                revived += self.pool.refs(block) == 0
        computed = min(matched * size, max(0, len(tokens) - 1))
        end = min(len(tokens), computed + count)
        copy = 1 if computed < matched * size else 0  # the last token is recomputed in a shared block
        return computed, revived + copy + max(0, -(-end // size) - matched)

    def admit(self, seq_id: int, tokens: Sequence[int]) -> int:
        """Start a block table for ``seq_id``, sharing the cached blocks of its longest known prefix.

        Returns the number of tokens already computed. At least the last token is always left to
        compute (its logits are needed); when that token lies in a shared block, ``allocate`` copies
        the block first.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already has a block table")
        entry = SequenceBlocks()
        if self.prefix_caching:
            for block_hash in self.prefix_hashes(tokens):
                block = self.pool.lookup(block_hash)
                if block is None:
                    break
                self.pool.share(block)
                entry.blocks.append(block)
                entry.hashes.append(block_hash)
        entry.computed = min(len(entry.blocks) * self.block_size, max(0, len(tokens) - 1))
        self._seqs[seq_id] = entry
        return entry.computed

    def allocate(self, seq_id: int, end: int) -> list[BlockCopy] | None:
        """Make room for tokens ``[computed, end)`` of ``seq_id``; ``None`` (no change) if the pool is short.

        Returns the block copies the runtime must make before writing: a block that is shared or
        registered is replaced in this table by a private copy (copy-on-write).
        """
        entry = self._seqs[seq_id]
        size = self.block_size
        start = entry.computed
        if end <= start:
            return []
        first, last = start // size, (end - 1) // size
        cow = [
            index
            for index in range(first, min(last + 1, len(entry.blocks)))
            if self.pool.refs(entry.blocks[index]) > 1 or self.pool.is_registered(entry.blocks[index])
        ]
        grow = max(0, last + 1 - len(entry.blocks))
        if len(cow) + grow > self.pool.free_blocks:
            return None
        copies: list[BlockCopy] = []
        for index in cow:
            source = entry.blocks[index]
            target = self.pool.allocate()
            self.pool.mark_written(target, self.pool.written(source))
            copies.append((source, target))
            entry.blocks[index] = target
            self.pool.release(source)
            del entry.hashes[index:]  # this block and any after it are no longer the registered ones
        for _ in range(grow):
            entry.blocks.append(self.pool.allocate())
        return copies

    def commit(self, seq_id: int, tokens: Sequence[int], computed: int) -> None:
        """Record that the first ``computed`` of ``tokens`` are in the cache; register new full blocks."""
        entry = self._seqs[seq_id]
        size = self.block_size
        if computed > len(entry.blocks) * size:
            raise ValueError(
                f"sequence {seq_id} computed {computed} tokens past its {len(entry.blocks)} blocks"
            )
        previous = entry.computed
        entry.computed = computed
        pool = self.pool
        for index in range(previous // size, -(-computed // size)):
            pool.mark_written(entry.blocks[index], min(size, computed - index * size))
        if not self.prefix_caching:
            return
        full = computed // size
        while len(entry.hashes) < full:
            index = len(entry.hashes)
            parent = entry.hashes[-1] if entry.hashes else None
            block_hash = hash_block(parent, tokens[index * size : (index + 1) * size])
            block = entry.blocks[index]
            if not pool.register(block, block_hash):
                # Another sequence registered the same content first: share theirs, drop ours.
                existing = pool.lookup(block_hash)
                if existing is not None and existing != block:
                    pool.share(existing)
                    entry.blocks[index] = existing
                    pool.release(block)
            entry.hashes.append(block_hash)

    def computed(self, seq_id: int) -> int:
        return self._seqs[seq_id].computed

    def rollback(self, seq_id: int, computed: int) -> int:
        """Forget what ``seq_id`` holds from position ``computed`` on (draft tokens the target
        rejected, say); returns how many blocks went back to the pool.

        The computed length goes back to ``computed`` when it was further; blocks holding no
        position before ``computed`` are released (newest first); the hashes of blocks no longer
        full leave this table, while the pool keeps such blocks registered for whoever else uses
        them. A later write into a kept block that is shared or registered is copied first, as
        always, so a rollback never changes what another sequence reads.
        """
        if computed < 0:
            raise ValueError(f"cannot roll sequence {seq_id} back to {computed}")
        entry = self._seqs[seq_id]
        size = self.block_size
        keep = -(-computed // size)
        released = entry.blocks[keep:]
        del entry.blocks[keep:]
        for block in reversed(released):
            self.pool.release(block)
        del entry.hashes[computed // size :]
        if computed < entry.computed:
            entry.computed = computed
            if computed % size:
                self.pool.unwrite(entry.blocks[-1], computed % size)
        return len(released)

    def fork(self, parent: int, child: int) -> None:
        """Give ``child`` the same blocks as ``parent`` (shared, copied on the first write)."""
        if child in self._seqs:
            raise ValueError(f"sequence {child} already has a block table")
        source = self._seqs[parent]
        for block in source.blocks:
            self.pool.share(block)
        self._seqs[child] = SequenceBlocks(list(source.blocks), list(source.hashes), source.computed)

    def free(self, seq_id: int) -> None:
        """Release every block of ``seq_id`` (no-op for an unknown sequence). Newest blocks go first,
        so under eviction a prefix's head outlives its tail."""
        entry = self._seqs.pop(seq_id, None)
        if entry is None:
            return
        for block in reversed(entry.blocks):
            self.pool.release(block)
