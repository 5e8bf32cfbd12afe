"""BlockPool bookkeeping (ref counts, free-list order, prefix hashes) and KV sizing helpers."""
from __future__ import annotations

import numpy as np
import pytest

from forge.runtime.kv_cache import NULL_BLOCK, BlockPool, KVCache, blocks_for_memory, hash_block


def _check_consistent(pool: BlockPool) -> None:
    """Free list == blocks at ref 0; cached map and block hashes agree."""
    zero = {b for b in range(1, pool.num_blocks) if pool.ref_counts[b] == 0}
    assert set(pool._free) == zero
    assert pool.num_free == len(zero)
    assert pool.ref_counts[NULL_BLOCK] >= 1
    for h, b in pool.cached.items():
        assert pool.block_hash[b] == h


def test_allocate_never_hands_out_null_block_and_exhausts():
    pool = BlockPool(9, 4)
    assert pool.num_free == pool.num_usable == 8
    got = pool.allocate(5)
    got += pool.allocate(3)
    assert sorted(got) == list(range(1, 9))
    assert NULL_BLOCK not in got
    assert pool.num_free == 0
    assert pool.allocate(1) is None
    assert pool.allocate(0) == []
    _check_consistent(pool)


def test_allocate_is_all_or_nothing():
    pool = BlockPool(6, 2)
    pool.allocate(3)
    assert pool.allocate(3) is None
    assert pool.num_free == 2  # nothing was taken by the failed call
    assert len(pool.allocate(2)) == 2


def test_ref_counts_and_double_free():
    pool = BlockPool(5, 4, enable_prefix_caching=True)
    a = pool.allocate(2)
    assert [pool.ref_counts[b] for b in a] == [1, 1]
    h = hash_block(None, [1, 2, 3, 4])
    assert pool.cache_block(a[0], h)
    pool.touch([a[0]])  # a second request shares it
    assert pool.ref_counts[a[0]] == 2
    pool.free(a)
    assert pool.ref_counts[a[0]] == 1 and pool.ref_counts[a[1]] == 0
    assert pool.num_free == 3
    pool.free([a[0]])
    assert pool.num_free == 4
    with pytest.raises(ValueError, match="double free"):
        pool.free([a[0]])
    with pytest.raises(ValueError, match="block 0"):
        pool.free([NULL_BLOCK])
    with pytest.raises(ValueError):
        pool.free([99])
    _check_consistent(pool)


def test_free_list_order_is_order_of_freeing_tail_first():
    pool = BlockPool(7, 1)
    a = pool.allocate(3)  # 1 2 3
    b = pool.allocate(3)  # 4 5 6
    pool.free(b)          # freed tail first: 6 5 4
    pool.free(a)          # then 3 2 1
    assert pool.allocate(6) == [b[2], b[1], b[0], a[2], a[1], a[0]]


def test_hash_chain_depends_on_parent_and_tokens():
    h0 = hash_block(None, [1, 2, 3])
    assert hash_block(None, [1, 2, 3]) == h0
    assert hash_block(None, [1, 2, 4]) != h0
    assert hash_block(h0, [5, 6, 7]) != hash_block(hash_block(None, [1, 2, 4]), [5, 6, 7])
    assert hash_block(h0, [5, 6, 7]) == hash_block(hash_block(None, [1, 2, 3]), [5, 6, 7])


def test_prefix_lookup_revival_and_eviction():
    bs = 2
    pool = BlockPool(5, bs)
    toks = [10, 11, 12, 13, 14, 15]
    hashes = []
    for i in range(3):
        hashes.append(hash_block(hashes[-1] if hashes else None, toks[i * bs:(i + 1) * bs]))
    blocks = pool.allocate(3)
    for b, h in zip(blocks, hashes):
        assert pool.cache_block(b, h)
    assert pool.lookup(hashes) == blocks
    # a different second block breaks the chain after the first block
    other = [hashes[0], hash_block(hashes[0], [99, 98]), hashes[2]]
    assert pool.lookup(other) == blocks[:1]

    pool.free(blocks)
    assert pool.num_free == 4
    assert pool.lookup(hashes) == blocks  # still cached at ref 0
    assert pool.num_revivals(blocks[:2]) == 2
    pool.touch(blocks[:2])                # revive: leaves the free list
    assert pool.num_free == 2
    assert [pool.ref_counts[b] for b in blocks] == [1, 1, 0]
    _check_consistent(pool)

    # Free list now: [the never-used block, blocks[2]]; taking two evicts blocks[2]'s prefix.
    fresh = pool.allocate(2)
    assert blocks[2] in fresh
    assert pool.lookup(hashes) == blocks[:2]
    assert hashes[2] not in pool.cached and pool.block_hash[blocks[2]] is None
    assert pool.num_evictions == 1
    with pytest.raises(ValueError, match="no cached prefix"):
        pool.touch([blocks[2]])
    _check_consistent(pool)


def test_cache_block_duplicates_and_disabled():
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2)
    h = hash_block(None, [1, 2])
    assert pool.cache_block(a, h)
    assert not pool.cache_block(b, h)          # another block already holds this prefix
    assert not pool.cache_block(a, hash_block(None, [3, 4]))  # a is registered already
    assert pool.lookup([h]) == [a]
    pool.reset_prefix_cache()
    assert pool.lookup([h]) == []
    with pytest.raises(ValueError, match="not held"):
        pool.cache_block(3, h)

    off = BlockPool(4, 2, enable_prefix_caching=False)
    c = off.allocate(1)[0]
    assert not off.cache_block(c, h)
    assert off.lookup([h]) == []


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(1, 4)
    with pytest.raises(ValueError, match="block_size"):
        BlockPool(8, 0)
    with pytest.raises(ValueError, match="n must"):
        BlockPool(8, 4).allocate(-1)


def test_random_alloc_free_keeps_counts(rng):
    pool = BlockPool(33, 4)
    held: list[list[int]] = []
    for _ in range(300):
        if held and rng.random() < 0.45:
            pool.free(held.pop(int(rng.integers(len(held)))))
        else:
            n = int(rng.integers(0, 6))
            got = pool.allocate(n)
            if got is None:
                assert n > pool.num_free
            else:
                held.append(got)
        flat = [b for g in held for b in g]
        assert len(flat) == len(set(flat)) and NULL_BLOCK not in flat
        assert pool.num_free == pool.num_usable - len(flat)
        _check_consistent(pool)
    for g in held:
        pool.free(g)
    assert pool.num_free == pool.num_usable


def test_blocks_for_memory():
    # 2 layers * 16 tokens * 4 heads * (64 + 32) dims * 2 bytes = 24576 bytes per block
    assert blocks_for_memory(24576 * 10 + 100, 16, 2, 4, 64, 32, 2) == 10
    assert blocks_for_memory(24575, 16, 2, 4, 64, 32, 2) == 0
    with pytest.raises(ValueError, match="kv_heads"):
        blocks_for_memory(1 << 20, 16, 2, 0, 64, 64, 2)
    with pytest.raises(ValueError, match="bytes_available"):
        blocks_for_memory(-1, 16, 2, 4, 64, 64, 2)


class _FakeBackend:
    def __init__(self):
        self.calls = []

    def alloc_kv(self, num_blocks, block_size, num_kv_heads, k_dim, v_dim):
        self.calls.append((num_blocks, block_size, num_kv_heads, k_dim, v_dim))
        return (np.zeros((num_blocks, block_size, num_kv_heads, k_dim), np.float32),
                np.zeros((num_blocks, block_size, num_kv_heads, v_dim), np.float32))


def test_kv_cache_allocates_each_layer():
    be = _FakeBackend()
    kv = KVCache(be, 3, 7, 16, kv_heads=[2, 2, 1], k_dim=8, v_dim=4)
    assert len(kv) == 3
    assert be.calls == [(7, 16, 2, 8, 4), (7, 16, 2, 8, 4), (7, 16, 1, 8, 4)]
    k, v = kv[2]
    assert k.shape == (7, 16, 1, 8) and v.shape == (7, 16, 1, 4)
    assert kv.nbytes == 4 * 7 * 16 * (2 * 12 + 2 * 12 + 1 * 12)
    with pytest.raises(ValueError, match="kv_heads"):
        KVCache(be, 3, 7, 16, kv_heads=[2, 2], k_dim=8, v_dim=8)
