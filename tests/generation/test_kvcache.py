"""Paged KV-cache bookkeeping (ladle.kvcache): blocks, tables, prefix sharing, copy-on-write, eviction."""

from __future__ import annotations

import pytest

from ladle.kvcache import BlockPool, KVCacheManager, blocks_for_budget, hash_block

BS = 4


def manager(blocks: int = 16, *, caching: bool = True) -> KVCacheManager:
    return KVCacheManager(BlockPool(blocks, BS), prefix_caching=caching)


def run(kv: KVCacheManager, seq: int, tokens: list[int]) -> None:
    """Admit ``seq`` and compute all of ``tokens`` (what the scheduler and a step do together)."""
    computed = kv.admit(seq, tokens)
    assert kv.allocate(seq, len(tokens)) is not None
    kv.commit(seq, tokens, len(tokens))
    assert computed <= len(tokens)


def test_pool_size_comes_from_the_memory_budget() -> None:
    assert blocks_for_budget(1 << 20, 16, 1024) == 64
    assert blocks_for_budget(1000, 16, 1024) == 0
    with pytest.raises(ValueError):
        blocks_for_budget(1 << 20, 0, 1024)


def test_a_table_grows_a_block_at_a_time_and_free_returns_every_block() -> None:
    kv = manager(8)
    kv.admit(1, list(range(9)))
    assert kv.allocate(1, 5) == []
    assert len(kv.block_table(1)) == 2
    kv.commit(1, list(range(9)), 5)
    assert kv.allocate(1, 9) == []
    assert len(kv.block_table(1)) == 3
    assert kv.pool.free_blocks == 5
    kv.free(1)
    assert kv.pool.free_blocks == 8 and kv.pool.used_blocks == 0


def test_allocation_is_all_or_nothing() -> None:
    kv = manager(3)
    kv.admit(1, list(range(20)))
    assert kv.allocate(1, 20) is None  # needs 5 blocks, the pool has 3
    assert kv.block_table(1) == []
    assert kv.pool.free_blocks == 3
    assert kv.allocate(1, 12) is not None
    assert kv.pool.free_blocks == 0


def test_hash_identifies_a_block_by_its_tokens_and_everything_before_them() -> None:
    first = hash_block(None, [1, 2, 3, 4])
    assert hash_block(None, [1, 2, 3, 4]) == first
    assert hash_block(first, [5, 6, 7, 8]) != hash_block(hash_block(None, [9, 9, 9, 9]), [5, 6, 7, 8])
    assert hash_block(None, [1, 2, 3, 5]) != first


def test_a_shared_prefix_is_not_computed_again_and_its_blocks_are_reference_counted() -> None:
    kv = manager(16)
    system = list(range(100, 110))  # two full blocks and a partial one
    run(kv, 1, [*system, 1, 2, 3])
    assert kv.admit(2, [*system, 7, 8]) == 8  # the two full blocks of the system prompt
    shared = kv.block_table(2)[:2]
    assert shared == kv.block_table(1)[:2]
    assert all(kv.pool.refs(block) == 2 for block in shared)
    assert kv.allocate(2, 12) == []  # the partial block is private: nothing to copy
    assert kv.block_table(2)[2] != kv.block_table(1)[2]
    kv.free(1)
    assert all(kv.pool.refs(block) == 1 for block in shared)
    kv.free(2)
    assert kv.pool.used_blocks == 0


def test_cached_blocks_outlive_their_sequence_until_the_space_is_needed() -> None:
    kv = manager(4)
    prompt = list(range(8))
    run(kv, 1, [*prompt, 99])
    kv.free(1)
    assert kv.pool.free_blocks == 4 and kv.pool.cached_blocks == 2
    assert kv.cached_prefix([*prompt, 5]) == 8
    assert kv.admit(2, [*prompt, 5]) == 8
    kv.free(2)
    # A sequence that needs the whole pool evicts them, least recently released first.
    kv.admit(3, list(range(50, 66)))
    assert kv.allocate(3, 16) is not None
    assert kv.cached_prefix([*prompt, 5]) == 0
    kv.free(3)


def test_a_fully_cached_prompt_recomputes_its_last_token_in_a_copy_of_the_shared_block() -> None:
    kv = manager(8)
    prompt = list(range(8))
    run(kv, 1, prompt)
    source = kv.block_table(1)[1]
    assert kv.admit(2, prompt) == 7  # the last token's logits are needed
    assert kv.block_table(2) == kv.block_table(1)
    copies = kv.allocate(2, 8)
    assert copies is not None and len(copies) == 1
    src, dst = copies[0]
    assert src == source and dst not in kv.block_table(1)
    assert kv.block_table(2)[1] == dst
    assert kv.pool.refs(source) == 1 and kv.pool.is_registered(source)
    kv.commit(2, prompt, 8)
    kv.free(1)
    kv.free(2)
    assert kv.pool.used_blocks == 0


def test_a_forked_sequence_copies_the_shared_partial_block_on_its_first_write() -> None:
    kv = manager(8)
    tokens = [1, 2, 3, 4, 5, 6]
    run(kv, 1, tokens)
    kv.fork(1, 2)
    assert kv.block_table(2) == kv.block_table(1)
    partial = kv.block_table(1)[1]
    assert kv.pool.refs(partial) == 2
    copies = kv.allocate(2, 7)
    assert copies == [(partial, kv.block_table(2)[1])]
    assert kv.pool.refs(partial) == 1
    assert kv.pool.written(kv.block_table(2)[1]) == 2  # the copy holds what the original held
    assert kv.allocate(1, 7) == []  # the parent's block is private again: written in place
    kv.free(1)
    kv.free(2)
    assert kv.pool.used_blocks == 0


def test_identical_blocks_computed_twice_are_merged() -> None:
    kv = manager(8)
    prompt = list(range(4))
    kv.admit(1, [*prompt, 1])
    kv.admit(2, [*prompt, 2])  # nothing cached yet: both compute the same first block
    assert kv.allocate(1, 5) == [] and kv.allocate(2, 5) == []
    assert kv.block_table(1)[0] != kv.block_table(2)[0]
    kv.commit(1, [*prompt, 1], 5)
    kv.commit(2, [*prompt, 2], 5)
    assert kv.block_table(1)[0] == kv.block_table(2)[0]
    assert kv.pool.used_blocks == 3
    kv.free(1)
    kv.free(2)


def test_utilisation_counts_written_slots_in_blocks_in_use() -> None:
    kv = manager(8)
    assert kv.pool.usage() == (0, 0)
    run(kv, 1, list(range(6)))
    assert kv.pool.usage() == (6, 8)
    kv.fork(1, 2)  # shared blocks count once
    assert kv.pool.usage() == (6, 8)
    kv.free(1)
    kv.free(2)
    assert kv.pool.usage() == (0, 0)


def test_admission_reports_what_admitting_would_take() -> None:
    kv = manager(8)
    run(kv, 1, list(range(8)))
    kv.free(1)
    computed, blocks = kv.admission([*range(8), 42, 43], 10)
    assert computed == 8 and blocks == 3  # two cached blocks revived, one new
    before = kv.pool.free_blocks
    assert kv.admit(2, [*range(8), 42, 43]) == 8
    assert kv.allocate(2, 10) == []
    assert before - kv.pool.free_blocks == blocks
    kv.free(2)


def test_slots_are_blocks_of_the_whole_context_without_prefix_caching() -> None:
    kv = KVCacheManager(BlockPool(2, 64), prefix_caching=False)
    for seq in (1, 2):
        assert kv.admit(seq, [5] * 10) == 0
        assert kv.allocate(seq, 64) == []
        assert len(kv.block_table(seq)) == 1
    kv.admit(3, [5] * 10)
    assert kv.allocate(3, 1) is None
    kv.free(1)
    assert kv.allocate(3, 1) == []


def test_misuse_is_refused() -> None:
    pool = BlockPool(2, BS)
    with pytest.raises(ValueError):
        pool.release(0)
    with pytest.raises(ValueError):
        pool.share(1)
    kv = KVCacheManager(pool)
    kv.admit(1, [1, 2])
    with pytest.raises(ValueError):
        kv.admit(1, [1, 2])
    with pytest.raises(ValueError):
        kv.commit(1, [1, 2], 2)  # nothing allocated yet
    assert pool.allocate() >= 0 and pool.allocate() >= 0
    with pytest.raises(MemoryError):
        pool.allocate()
    with pytest.raises(ValueError):
        BlockPool(0, BS)


def test_draft_tokens_past_the_accepted_ones_are_rolled_back() -> None:
    kv = manager(8)
    tokens = list(range(6))  # computed 5, the sixth is fed next
    kv.admit(1, tokens)
    assert kv.allocate(1, 5) == []
    kv.commit(1, tokens, 5)
    assert len(kv.block_table(1)) == 2
    # a step feeds token 5 plus four draft tokens: positions 5..9 need three blocks
    assert kv.allocate(1, 10) == []
    assert len(kv.block_table(1)) == 3 and kv.pool.free_blocks == 5
    accepted = [*tokens, 60]  # one draft accepted: positions 5 and 6 hold valid K/V
    kv.commit(1, accepted, 7)
    assert kv.rollback(1, 7) == 1  # positions 8 and 9 were in a block of their own
    assert kv.computed(1) == 7 and len(kv.block_table(1)) == 2 and kv.pool.free_blocks == 6
    assert kv.pool.usage() == (7, 8)
    assert kv.rollback(1, 7) == 0  # nothing more to release
    # every draft accepted: nothing to release
    assert kv.allocate(1, 8) == []
    kv.commit(1, [*accepted, 61], 8)
    assert kv.rollback(1, 8) == 0 and len(kv.block_table(1)) == 2
    kv.free(1)
    assert kv.pool.used_blocks == 0 and kv.pool.usage() == (0, 0)


def test_rolling_back_into_a_shared_registered_block_copies_it_before_the_next_write() -> None:
    kv = manager(8)
    prompt = list(range(8))
    run(kv, 1, prompt)
    assert kv.admit(2, [*prompt, 9]) == 8
    shared = kv.block_table(2)[1]
    assert kv.pool.refs(shared) == 2 and kv.pool.is_registered(shared)
    assert kv.rollback(2, 6) == 0  # back into the second (shared, registered) block
    assert kv.computed(2) == 6 and kv.block_table(2)[1] == shared
    assert kv.pool.written(shared) == 4  # sequence 1 still reads all of it
    copies = kv.allocate(2, 8)
    assert copies is not None and len(copies) == 1 and copies[0][0] == shared
    assert kv.block_table(1)[1] == shared and kv.pool.is_registered(shared)
    kv.commit(2, [*prompt, 9], 8)  # the same tokens: the copy merges back into the registered block
    assert kv.block_table(2)[1] == shared
    assert kv.cached_prefix(prompt) == 8
    kv.free(1)
    kv.free(2)
    assert kv.pool.used_blocks == 0


def test_rolling_back_a_private_block_lowers_its_written_mark_and_to_zero_frees_everything() -> None:
    kv = manager(8)
    run(kv, 1, list(range(7)))
    assert kv.pool.usage() == (7, 8)
    assert kv.rollback(1, 5) == 0
    assert kv.computed(1) == 5 and kv.pool.usage() == (5, 8)
    assert kv.rollback(1, 0) == 2
    assert kv.block_table(1) == [] and kv.pool.used_blocks == 0 and kv.pool.usage() == (0, 0)
    assert kv.allocate(1, 3) == [] and len(kv.block_table(1)) == 1
    with pytest.raises(ValueError):
        kv.rollback(1, -1)
    kv.free(1)
