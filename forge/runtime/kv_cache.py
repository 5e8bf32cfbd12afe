"""The paged KV cache: `BlockPool` (device-free bookkeeping) and `KVCache` (the arrays).

BlockPool hands out block ids. Block 0 is the null block: it pads block tables and is never
handed out. Each block has a ref count; a block at ref 0 sits in the free list, which is kept in
the order blocks were freed (the oldest-freed block is reused first, an LRU for the prefix
cache).

Prefix caching: a *full* block whose K/V is (or is being) computed can be registered under a
chained hash of its contents, `hash_block(parent_hash, tokens)`, so the hash of block i names the
whole prefix of tokens [0, (i+1)*block_size). A later request whose tokens start with the same
full blocks takes them (ref count + 1) instead of recomputing them. A registered block freed to
ref 0 keeps its hash and can still be revived from the free list, until `allocate` hands it out
again, which evicts it from the cache.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Any, Iterable, Sequence

NULL_BLOCK = 0


def hash_block(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """Chained prefix hash of one full block: blake2b(parent hash, token ids as int64)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent if parent is not None else b"root")
    h.update(array("q", tokens).tobytes())
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if not isinstance(num_blocks, int) or num_blocks < 2:
            raise ValueError(f"num_blocks must be an int >= 2 (block 0 is the null block), "
                             f"got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self.ref_counts = [0] * num_blocks
        self.ref_counts[NULL_BLOCK] = 1  # pinned forever
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # prefix hash -> block id
        # Free blocks in freeing order; OrderedDict gives O(1) removal from the middle (revival).
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))
        self.num_evictions = 0

    # ---- counts -------------------------------------------------------------------------
    @property
    def num_usable(self) -> int:
        """All blocks but the null block."""
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        """Blocks at ref 0, including cached ones that are still revivable."""
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_usable * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocate / free ----------------------------------------------------------------
    def allocate(self, n: int) -> list[int] | None:
        """n fresh blocks at ref 1, or None (and nothing taken) when fewer than n are free.

        A free block that still holds a cached prefix loses its hash (eviction)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > len(self._free):
            return None
        out = []
        for _ in range(n):
            b, _ = self._free.popitem(last=False)
            h = self.block_hash[b]
            if h is not None:
                if self.cached.get(h) == b:
                    del self.cached[h]
                self.block_hash[b] = None
                self.num_evictions += 1
            self.ref_counts[b] = 1
            out.append(b)
        return out

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference to each block; a block at ref 0 goes to the free list.

        Blocks are freed last-first, so a request's tail blocks (the least shared) are evicted
        before its head blocks."""
        for b in reversed(list(blocks)):
            if b == NULL_BLOCK or not 0 < b < self.num_blocks:
                raise ValueError(f"free: block {b} is not a block that can be freed")
            rc = self.ref_counts[b]
            if rc <= 0:
                raise ValueError(f"free: block {b} is already free (double free)")
            self.ref_counts[b] = rc - 1
            if rc == 1:
                self._free[b] = None

    # ---- prefix cache ---------------------------------------------------------------------
    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """The blocks caching the longest prefix of `hashes` (no ref counts change)."""
        if not self.enable_prefix_caching:
            return []
        out = []
        for h in hashes:
            b = self.cached.get(h)
            if b is None:
                break
            out.append(b)
        return out

    def num_revivals(self, blocks: Iterable[int]) -> int:
        """How many of `blocks` are at ref 0 (taking them uses up free blocks)."""
        return sum(1 for b in blocks if self.ref_counts[b] == 0)

    def touch(self, blocks: Iterable[int]) -> None:
        """Take one more reference to each (cached) block, reviving it from the free list."""
        for b in blocks:
            if b == NULL_BLOCK or self.block_hash[b] is None:
                raise ValueError(f"touch: block {b} holds no cached prefix")
            if self.ref_counts[b] == 0:
                del self._free[b]
            self.ref_counts[b] += 1

    def cache_block(self, block: int, block_hash: bytes) -> bool:
        """Register a full, held block under its prefix hash. False (and nothing changes) when
        caching is off, the block is registered already, or another block holds that prefix."""
        if not self.enable_prefix_caching:
            return False
        if self.ref_counts[block] <= 0 or block == NULL_BLOCK:
            raise ValueError(f"cache_block: block {block} is not held")
        if self.block_hash[block] is not None or block_hash in self.cached:
            return False
        self.block_hash[block] = block_hash
        self.cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after the weights change)."""
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks


def blocks_for_memory(bytes_available: int, block_size: int, layers: int, kv_heads: int,
                      k_dim: int, v_dim: int, bytes_per_elem: int) -> int:
    """How many KV blocks (null block included) fit in `bytes_available` bytes."""
    for name, v in (("block_size", block_size), ("layers", layers), ("kv_heads", kv_heads),
                    ("k_dim", k_dim), ("v_dim", v_dim), ("bytes_per_elem", bytes_per_elem)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if bytes_available < 0:
        raise ValueError(f"bytes_available must be >= 0, got {bytes_available!r}")
    per_block = layers * block_size * kv_heads * (k_dim + v_dim) * bytes_per_elem
    return int(bytes_available // per_block)


class KVCache:
    """Per-layer (K, V) arrays `[num_blocks, block_size, kv_heads, k_dim|v_dim]` from a backend.

    `kv_heads`, `k_dim` and `v_dim` may be ints or per-layer sequences."""

    def __init__(self, backend: Any, num_layers: int, num_blocks: int, block_size: int,
                 kv_heads: int | Sequence[int], k_dim: int | Sequence[int],
                 v_dim: int | Sequence[int]):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")

        def per_layer(name, v):
            vs = [v] * num_layers if isinstance(v, int) else list(v)
            if len(vs) != num_layers:
                raise ValueError(f"{name}: expected {num_layers} per-layer values, got {len(vs)}")
            return vs

        heads, kd, vd = per_layer("kv_heads", kv_heads), per_layer("k_dim", k_dim), \
            per_layer("v_dim", v_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.layers = [backend.alloc_kv(num_blocks, block_size, h, a, b)
                       for h, a, b in zip(heads, kd, vd)]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> tuple[Any, Any]:
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in self.layers)
