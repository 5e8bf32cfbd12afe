"""Paged causal attention in Triton: GQA, sliding window, logit softcap, varlen prefill and decode.

Meaning (the same as forge/cpu/attention.py and `Backend.attention` in runtime/backend.py):
sequence b owns query rows [qsl[b], qsl[b+1]) of q; they are its last q_len tokens, so query i
sits at position p = seq_lens[b] - q_len + i and attends the cached keys j (found through
block_tables[b]) with j <= p and, with a sliding window W, p - j < W. Scores are q.k * scale,
then softcap * tanh(s / softcap), then an fp32 online softmax, then @ V. Query head h reads KV
head h // (H // Hkv). The K/V of this step's tokens are already in the cache, so chunked prefill,
plain prefill and decode are one piece of math.

Kernels
-------
- `_attn_prefill_kernel`: flash attention over the paged cache, varlen. A program owns a tile of
  BLOCK_M rows = BQ consecutive query tokens x HT query heads of one KV group (all heads of the
  group when they fit), so every K/V tile it loads serves all heads of the group. Program ids map
  to (sequence, query tile) on the device (no host sync): sequence b's tiles start at
  qsl[b] // BQ + b, so the grid is T // BQ + B tiles, walked from the last tile to the first (the
  causally longest tiles start first: less tail). The KV loop runs from the window's first tile
  to the diagonal; only the edge tiles pay for masks (SINGLE_LOOP=False), or one masked loop body
  does it all (SINGLE_LOOP=True: fewer live registers, the AMD default). P @ V accumulates into
  the rescaled accumulator inside the MMA. The cache block ids of the next K/V tile are loaded
  one tile ahead and carried: with the id gather in the same iteration as the K/V loads that
  use it, Triton's software pipeliner (sm90, 3 stages) single-buffered K/V and waited for every
  copy at the top of each tile, so each tile paid the full memory latency; carried, the K/V
  tiles are triple-buffered and issued two tiles ahead (`async_wait num=2` in the TTGIR).
  Split keys: when the grid has fewer tiles than the device has CUs (one KV head and a short
  chunk: Gemma 3's 512-token chunk is 33 tiles for 132 SMs), grid axis 2 gives each tile S
  programs (`num_prefill_splits`, host ints only, so a captured graph keeps its grid). Each
  tile splits its own keys on the device (`_split_share`): runs of at least KV_SPLIT_MIN keys
  of the unmasked tiles, the last run also taking the masked ones, and no split for a tile
  with fewer keys. Every split stores its unnormalised partial (acc, max, sum); the last of
  the tile's splits to arrive merges them and stores the output, with the decode kernel's
  arrival counters (below). H100, 512 queries after 4,096 keys at Gemma 3 heads: 153 -> 52 us.
  Whole prompts (FRESH, `attention(..., fresh=)`, Hopper): a sequence with no cached context
  reads its keys from this step's rotated K / V rows instead (the rope kernel also writes the
  rotated k rows when `attention` applies the rope), contiguous from the sequence's first
  token, by tensor-memory copies (host tensor descriptors, boxes of BLOCK_N_FRESH keys), with
  no block-id gather; other sequences of the same launch read the cache. The two key loops are
  separate branches, each with its own tile width and split of the keys. Keys past a tile's
  end are then real rows of later tokens or the copies' zero fill, which the mask removes.
  H100, run 28: 2,048 / 8,192-token prompts 3-7% faster at Llama-3-8B heads, 11-15% at
  Llama-3.2-1B's (d64), 15-18% at Gemma 3's (d256); end to end pp8192 +1-3%.
- `_attn_decode_kernel`: one query per sequence; one program per (sequence, KV head, split)
  handles the whole GQA group (the G query heads are the rows of one tl.dot, padded to 16).
  K and V tiles are [BLOCK_N, D] loads, D contiguous (16-byte vectors), issued back to back.
- `_attn_reduce_kernel`: merges the splits' partials when FUSED_REDUCE is off (see below).

Decode splits under CUDA graphs
-------------------------------
The decode step is captured once per batch size with max_seq_len = the engine's max_model_len
(8K .. 128K), so the grid is fixed while the real contexts vary from 1 to max_model_len. Hence:

1. The grid's split count S comes from host ints only: S = min(cdiv(max_seq_len, MIN_PARTITION),
   cdiv(SPLITS_PER_CU * #CUs, B * Hkv), MAX_SPLITS). It aims at ~SPLITS_PER_CU programs per CU
   for the whole batch and is bounded by it, so the grid never grows with max_seq_len beyond
   ~SPLITS_PER_CU x #CUs programs (H100, B=1, Hkv=8: S=64, 512 programs, whether max_seq_len is
   8K or 128K). Programs that find no work exit after three scalar loads.
2. Each sequence splits ITS OWN length on the device: part = max(MIN_PARTITION, cdiv(span, S))
   rounded up to BLOCK_N, n_parts = cdiv(span, part) <= S, where span is the keys it attends
   (the window's keys only). A 512-token sequence in a graph captured for 128K uses 8 splits of
   64 keys (batch 1), not one split of 512 nor 2048 mostly-empty ones; a 100K-token one uses all
   S. Splits >= n_parts exit at once. (A split size derived from max_seq_len instead would give
   a short sequence one serial program, or a grid that scales with max_seq_len.)
3. With n_parts == 1 a program writes the output directly: one kernel, no partials, no reduce.
4. With n_parts > 1 each split writes (max, sum, acc) partials; with FUSED_REDUCE the last split
   of a (sequence, KV head) group to finish merges them (an arrival counter per group, acq_rel
   atomics at GPU scope, reset to zero by that last program, so the counters are zero between
   launches and graph replays need no memset). So decode is always ONE launch, and the merge
   reads exactly the n_parts partials that exist. Without FUSED_REDUCE (the CDNA default:
   agent-scope release writes back the XCD's L2 on gfx942) `_attn_reduce_kernel` does the same
   merge in a second launch and skips groups with n_parts == 1.
   The counters live in one int32 buffer per device that is only ever grown (old buffers are
   kept alive: a captured graph keeps using the one it saw). Two attention launches that use
   them (decode, split-key prefill) must not run concurrently on different streams of one
   device (they would share counters).
5. The price of a fixed grid: at large batches S falls to 1 (B * Hkv programs already fill the
   GPU), so one long sequence among many short ones is one program per KV head.

Rope fused into decode
----------------------
`attention(..., rope=rope.fused_args(...))` means rope.rope followed by attention. At decode
(and when q stays in registers: QK_CHUNK == BLOCK_DK) the decode kernel does the rope itself,
which saves the rope kernel's launch and its dependent chain in every layer of a decode step
(on H100 the rope kernel took 3.6-4.3 us of a ~180 us layer of the 8B F16 model at batch 1):
- every program rotates its q rows (two gathers of the rows: x and its pair partner; cos/sin of
  the float32 angle as rope.py computes them), rounded to q's dtype as the rope kernel stores q;
- the query's own key (position seq_len - 1) is not in the cache yet, so the cache loop stops
  before it, and the split that ends at seq_len adds that key from this step's k row (rotated,
  rounded to the cache dtype) and v row to its online softmax, then (first head chunk of the
  group only) stores both into the cache at the token's slot for later steps. No program reads
  that slot in this launch, so no ordering between programs is needed.
Prefill keeps the rope kernel (its queries' keys must be in the cache before the tiles run).

Scores are kept in log2 units (scale * log2(e) folded in) so the softmax uses exp2. Cache block
ids are widened to int64 before they multiply a stride where a cache may span 2^31 elements or
more: always in decode (32-bit offsets measured no faster there), in prefill only when one does
(IDX64; 32-bit offsets took an 8B-head prefill on an H100 from 275 to 303 TFLOP/s).
Masked-off keys are never read from the cache (their loads are masked), so stale or NaN cache
slots past a sequence's end and the null block 0 cannot leak into the output. (The fresh rows
past a sequence's end are read and masked: finite activations of later tokens.) The cache
strides are constexprs (fixed per model): address arithmetic folds to immediates and the launch
is shorter.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from forge.kernels import env, pdl, tuning, xquant
from forge.kernels import rope as rope_mod
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.kernels.rope import _sincos
from forge.kernels.xquant import _xq_store
from forge.kernels.specs import divisibility_attrs

try:  # host-side tensor descriptors (Triton >= 3.4): the whole-prompt path's K / V copies
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: that path is off
    TensorDescriptor = None

LOG2E = 1.4426950408889634
MAX_SPLITS = 256          # hard cap on decode splits per sequence (configs cap lower: MAX_SPLITS)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NO_GPU_CUS = 4           # CUs the split decisions assume under the interpreter (tests vary it)


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _scores(qk, qk_scale, cap_scale, SOFTCAP: tl.constexpr):
    """Raw fp32 q.k -> scores in log2 units.

    Without softcap: qk * scale * log2e (= qk * qk_scale). With softcap c:
    c * tanh(qk * scale / c) * log2e, with tanh(x) = 1 - 2 / (exp(2x) + 1) (exact limits at
    +-inf), qk_scale = 2 * log2e * scale / c and cap_scale = c * log2e.
    """
    if SOFTCAP:
        t = 1.0 - 2.0 / (tl.exp2(qk * qk_scale) + 1.0)
        return t * cap_scale
    else:
        return qk * qk_scale


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr):
    """fp32-accumulating a @ b. DOT_F32 upcasts the operands first: only for bf16 under the
    interpreter, whose dot mistakes bf16 (held as uint16 in NumPy) for integers."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _dot_acc(a, b, acc, DOT_F32: tl.constexpr):
    """acc + a @ b, accumulated inside the MMA."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _load_rows(row_ptrs, row_ok, D: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """[R, BLOCK_D] tile: row r is D contiguous elements at row_ptrs[r]; zeros past D and (with
    MASK_ROWS) on rows where row_ok is false, which are not read. With full rows and no row mask
    the load carries no predicate at all (plain 16-byte loads / async copies)."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = row_ptrs[:, None] + offs_d[None, :]
    if MASK_ROWS:
        return tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    elif D == BLOCK_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)


@triton.jit
def _qk_chunked(q_rows, q_ok, k_rows, in_kv, Dk: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, QK_CHUNK: tl.constexpr,
                MASK_ROWS: tl.constexpr, DOT_F32: tl.constexpr):
    """Q K^T [BLOCK_M, BLOCK_N] summed over head-dim chunks of QK_CHUNK, Q reloaded from its row
    pointers (for FMA dots, fp32 on RDNA3, which keep a whole K-row per thread). The loop is
    kept rolled (unrolled, the compiler schedules every chunk's loads at once and the registers
    are gone again: gfx1100 fp32 d256 spilled ~240 VGPRs, rolled it needs ~128)."""
    qk = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in tl.range(0, BLOCK_DK // QK_CHUNK, loop_unroll_factor=1):
        offs_c = c * QK_CHUNK + tl.arange(0, QK_CHUNK)
        qc = tl.load(q_rows[:, None] + offs_c[None, :],
                     mask=q_ok[:, None] & (offs_c[None, :] < Dk), other=0.0)
        if MASK_ROWS:
            kcm = in_kv[:, None] & (offs_c[None, :] < Dk)
        else:
            kcm = offs_c[None, :] < Dk
        kc = tl.load(k_rows[:, None] + offs_c[None, :], mask=kcm, other=0.0)
        qk = _dot_acc(qc, tl.trans(kc), qk, DOT_F32)
    return qk


@triton.jit
def _tile_ids(bt_ptr, start, hi, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
              MASKED: tl.constexpr, IDX64: tl.constexpr = True, NONE: tl.constexpr = False):
    """Cache block ids of the keys [start, start + BLOCK_N): one id when the tile lies in one
    cache block (start is a multiple of BLOCK_N), else one per key; keys >= hi get block 0
    (never read) when MASKED (and the table past its end is not touched). int64 with IDX64,
    else the table's int32 (offsets then stay 32-bit: caches under 2**31 elements). NONE: the
    keys are not in the cache (the fresh rows' copies): 0, and no load."""
    if NONE:
        ids = 0
    elif BLOCK_SIZE % BLOCK_N == 0:
        if MASKED:
            ids = tl.load(bt_ptr + start // BLOCK_SIZE, mask=start < hi, other=0)
        else:
            ids = tl.load(bt_ptr + start // BLOCK_SIZE)
    else:
        offs_n = start + tl.arange(0, BLOCK_N)
        if MASKED:
            ids = tl.load(bt_ptr + offs_n // BLOCK_SIZE, mask=offs_n < hi, other=0)
        else:
            ids = tl.load(bt_ptr + offs_n // BLOCK_SIZE)
    if IDX64 and not NONE:
        ids = ids.to(tl.int64)
    return ids


@triton.jit
def _prefill_tile(
    acc, l_i, m_i, q, q_ok, start, hi, pos0,
    blk,          # cache block ids of the tile (_tile_ids)
    k_cache_ptr,  # [NB, BS, Hkv, Dk]
    v_cache_ptr,  # [NB, BS, Hkv, Dv]
    k_head_off, v_head_off,
    qk_scale, cap_scale, window,
    HT: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, STRIDE_KB: tl.constexpr, STRIDE_KS: tl.constexpr,
    STRIDE_VB: tl.constexpr, STRIDE_VS: tl.constexpr, QK_CHUNK: tl.constexpr,
    MASKED: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, DOT_F32: tl.constexpr,
    k_desc=None, v_desc=None, kv_row=0, kvh=0,
    TMA: tl.constexpr = False,
):
    """Online-softmax update with the keys [start, start + BLOCK_N) (those < hi). MASKED=False
    only for tiles every row of the query tile may fully see (no predicate on any load). Row r
    of the tile is query position pos0 + r // HT. q: the Q tile, or (QK_CHUNK < BLOCK_DK) its
    row pointers, with q_ok the valid rows. blk: the tile's cache block ids, loaded by the
    caller (the unmasked loop loads them one tile ahead). TMA: K and V are instead this step's
    rows [kv_row + start, ...) of k_desc / v_desc (head kvh's columns), one tensor-memory copy
    each; keys past hi are then real rows of later tokens or the descriptor's zero fill, which
    the mask removes (their V rows meet p = 0)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    in_kv = offs_n < hi
    slot = offs_n % BLOCK_SIZE
    k_rows = k_cache_ptr + (blk * STRIDE_KB + (slot * STRIDE_KS + k_head_off))
    if TMA:  # (whole rows: the launcher takes this path only where Dk == BLOCK_DK == QK_CHUNK)
        k = k_desc.load([kv_row + start, kvh * Dk])
        qk = _dot(q, tl.trans(k), DOT_F32)
    elif QK_CHUNK == BLOCK_DK:
        k = _load_rows(k_rows, in_kv, Dk, BLOCK_DK, MASKED)
        qk = _dot(q, tl.trans(k), DOT_F32)
    else:
        qk = _qk_chunked(q, q_ok, k_rows, in_kv, Dk, BLOCK_M, BLOCK_N, BLOCK_DK, QK_CHUNK, MASKED,
                         DOT_F32)
    if MASKED or SOFTCAP:
        s = _scores(qk, qk_scale, cap_scale, SOFTCAP)
        if MASKED:
            pos = pos0 + tl.arange(0, BLOCK_M) // HT
            valid = (offs_n[None, :] <= pos[:, None]) & in_kv[None, :]
            if WINDOW:
                valid = valid & (pos[:, None] - offs_n[None, :] < window)
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    else:
        # the scale folded into one multiply-add per score (qk_scale >= 0: the launcher checks)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_desc.load([kv_row + start, kvh * Dv])
    else:
        v = _load_rows(v_cache_ptr + (blk * STRIDE_VB + (slot * STRIDE_VS + v_head_off)), in_kv,
                       Dv, BLOCK_DV, MASKED)
    acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
    return acc, l_i, m_new


@triton.jit
def _prefill_loops(
    acc, l_i, m_i, q, row_ok, p_lo, p_hi, window, split, num_splits, min_keys, bt_ptr,
    k_cache_ptr, v_cache_ptr, kvh, qk_scale, cap_scale,
    HT: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, STRIDE_KB: tl.constexpr, STRIDE_KS: tl.constexpr,
    STRIDE_KH: tl.constexpr, STRIDE_VB: tl.constexpr, STRIDE_VS: tl.constexpr,
    STRIDE_VH: tl.constexpr, QK_CHUNK: tl.constexpr, SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr, DOT_F32: tl.constexpr, SINGLE_LOOP: tl.constexpr, IDX64: tl.constexpr,
    SPLIT: tl.constexpr, k_desc, v_desc, kv_row, TMA: tl.constexpr,
):
    """The prefill kernel's keys for the query tile at positions [p_lo, p_hi], in tiles of
    BLOCK_N: (acc, l_i, m_i, n_parts). With SPLIT this program (`split` of num_splits) takes
    its share of at least min_keys keys, and n_parts is how many programs share the tile (else
    1). TMA: K / V from the descriptors at rows kv_row + key (no block ids)."""
    # Keys [kv_lo, kv_end). Tiles in [b_end, c_end) need no mask for any row; the masked loop
    # covers the window's leading tiles [kv_lo, b_end) and the diagonal [c_end, kv_end).
    kv_end = p_hi + 1
    if WINDOW:
        kv_lo = (tl.maximum(p_lo - window + 1, 0) // BLOCK_N) * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(p_hi - window + 1, 0), BLOCK_N) * BLOCK_N
    else:
        kv_lo = p_lo * 0
        full_lo = kv_lo
    b_end = tl.minimum(tl.maximum(full_lo, kv_lo), kv_end)
    c_end = tl.maximum(tl.minimum(((p_lo + 1) // BLOCK_N) * BLOCK_N, kv_end), b_end)
    n_front = tl.cdiv(b_end - kv_lo, BLOCK_N)
    n_masked = n_front + tl.cdiv(kv_end - c_end, BLOCK_N)
    # This program's share of the loop: the single loop's tiles [s_lo, s_hi), or the unmasked
    # tiles [u_lo, u_hi) plus, on the last split only, the n_masked edge tiles.
    s_lo = kv_lo
    s_hi = kv_end
    u_lo = b_end
    u_hi = c_end
    n_parts = 1
    if SPLIT:
        min_tiles = tl.cdiv(min_keys, BLOCK_N)
        if SINGLE_LOOP:
            first, n_tiles, n_parts = _split_share(tl.cdiv(kv_end - kv_lo, BLOCK_N), split,
                                                   num_splits, min_tiles)
            s_lo = tl.minimum(kv_lo + first * BLOCK_N, kv_end)
            s_hi = tl.minimum(s_lo + n_tiles * BLOCK_N, kv_end)
        else:
            first, n_tiles, n_parts = _split_share((c_end - b_end) // BLOCK_N, split,
                                                   num_splits, min_tiles)
            u_lo = tl.minimum(b_end + first * BLOCK_N, c_end)
            u_hi = tl.minimum(u_lo + n_tiles * BLOCK_N, c_end)
            n_masked = tl.where(split == n_parts - 1, n_masked, 0)
    k_head_off = kvh * STRIDE_KH
    v_head_off = kvh * STRIDE_VH
    if SINGLE_LOOP:
        # One loop body: masks on every tile, but only one copy of the dot operands live (two
        # loops overflow RDNA3's 256 VGPRs even at 64x16 tiles).
        for start in range(s_lo, s_hi, BLOCK_N):
            blk = _tile_ids(bt_ptr, start, kv_end, BLOCK_N, BLOCK_SIZE, True, IDX64, TMA)
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, kv_end, p_lo, blk, k_cache_ptr, v_cache_ptr,
                k_head_off, v_head_off, qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M,
                BLOCK_N, BLOCK_DK, BLOCK_DV, BLOCK_SIZE, STRIDE_KB, STRIDE_KS, STRIDE_VB,
                STRIDE_VS, QK_CHUNK, True, SOFTCAP, WINDOW, DOT_F32, k_desc, v_desc, kv_row, kvh,
                TMA)
    else:
        # The block ids of tile i + 1 are loaded during tile i and carried: the K/V loads then
        # depend on no load of their own iteration, so the software pipeliner can issue them
        # num_stages - 1 tiles ahead (with the id gather in the same iteration it waits for
        # every copy at the top of each tile and the memory latency shows on every tile).
        blk = _tile_ids(bt_ptr, u_lo, u_hi, BLOCK_N, BLOCK_SIZE, True, IDX64, TMA)
        for start in range(u_lo, u_hi, BLOCK_N):
            blk_next = _tile_ids(bt_ptr, start + BLOCK_N, u_hi, BLOCK_N, BLOCK_SIZE, True,
                                 IDX64, TMA)
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, u_hi, p_lo, blk, k_cache_ptr, v_cache_ptr,
                k_head_off, v_head_off, qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M,
                BLOCK_N, BLOCK_DK, BLOCK_DV, BLOCK_SIZE, STRIDE_KB, STRIDE_KS, STRIDE_VB,
                STRIDE_VS, QK_CHUNK, False, SOFTCAP, WINDOW, DOT_F32, k_desc, v_desc, kv_row, kvh,
                TMA)
            blk = blk_next
        for i in range(0, n_masked):
            front = i < n_front
            start = tl.where(front, kv_lo + i * BLOCK_N, c_end + (i - n_front) * BLOCK_N)
            hi = tl.where(front, b_end, kv_end)
            blk = _tile_ids(bt_ptr, start, hi, BLOCK_N, BLOCK_SIZE, True, IDX64, TMA)
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, hi, p_lo, blk, k_cache_ptr, v_cache_ptr,
                k_head_off, v_head_off, qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M,
                BLOCK_N, BLOCK_DK, BLOCK_DV, BLOCK_SIZE, STRIDE_KB, STRIDE_KS, STRIDE_VB,
                STRIDE_VS, QK_CHUNK, True, SOFTCAP, WINDOW, DOT_F32, k_desc, v_desc, kv_row, kvh,
                TMA)
    return acc, l_i, m_i, n_parts


# Integer arguments Triton would otherwise specialise (to a constant when 1, or as divisible by 16)
# and that change from call to call: each distinct specialisation is another compile, and a
# constant 1 or a divisibility hint buys nothing in these loops (run 25's census: 6 of 13 prefill
# builds on a first start of Gemma 3 1B were num_seqs / num_splits / stride_bt equal to 1).
_PREFILL_DNS = ["num_seqs", "num_splits", "stride_bt"]
_DECODE_DNS = ["num_splits", "stride_bt"]


@triton.jit(do_not_specialize=_PREFILL_DNS)
def _attn_prefill_kernel(
    q_ptr,             # [T, H*Dk]   row stride stride_qt
    k_cache_ptr,       # [NB, BS, Hkv, Dk]  strides (STRIDE_KB, STRIDE_KS, STRIDE_KH, 1)
    v_cache_ptr,       # [NB, BS, Hkv, Dv]  strides (STRIDE_VB, STRIDE_VS, STRIDE_VH, 1)
    out_ptr,           # [T, H*Dv]   row stride stride_ot
    part_ptr,          # SPLIT: f32 [R, BLOCK_M, Dv] partial accs, then [R, 2, BLOCK_M] (max,
                       #   sum); R = tiles x groups x num_splits, row (program_id(0) * ng + g)
                       #   * S + split
    sem_ptr,           # SPLIT: [>= tiles x groups] i32 arrival counters, zero between launches
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    block_tables_ptr,  # [B, W] i32  row stride stride_bt
    num_seqs,
    num_splits, min_tiles,  # SPLIT: the grid's splits; unmasked KV tiles per split at least
    stride_qt, stride_ot, stride_bt,
    qk_scale, cap_scale, window,
    G: tl.constexpr,        # query heads per KV head
    HT: tl.constexpr,       # query heads per tile (<= G)
    NHC: tl.constexpr,      # head chunks per KV group = cdiv(G, HT)
    BQ: tl.constexpr,       # query tokens per tile = BLOCK_M // HT
    Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # cache block size (tokens per block)
    BLOCK_B: tl.constexpr,     # chunk of query_start_loc scanned at a time
    STRIDE_KB: tl.constexpr, STRIDE_KS: tl.constexpr, STRIDE_KH: tl.constexpr,
    STRIDE_VB: tl.constexpr, STRIDE_VS: tl.constexpr, STRIDE_VH: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, DOT_F32: tl.constexpr,
    SINGLE_LOOP: tl.constexpr,  # one masked loop over all keys (fewer registers: AMD)
    QK_CHUNK: tl.constexpr,     # head-dim chunk of Q K^T (BLOCK_DK: Q stays in registers)
    IDX64: tl.constexpr,        # 64-bit cache offsets (a cache of 2**31 elements or more)
    SPLIT: tl.constexpr = False,  # the keys of a tile split over num_splits programs (axis 2)
    k_desc=None, v_desc=None,     # FRESH: this step's K / V rows [T, Hkv*D] as descriptors
    FRESH: tl.constexpr = False,  # sequences with no cached context read K / V from k_desc /
                                  #   v_desc (tensor-memory copies) instead of the cache
    BLOCK_N_FRESH: tl.constexpr = 0,  # FRESH: keys per tile there (the descriptors' boxes;
                                      #   0: BLOCK_N)
):
    # Last tile first: with causal masking the late tiles of a sequence have the most keys, so
    # starting them first keeps the tail of the grid short.
    pid_q = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_h = tl.program_id(1)
    kvh = pid_h // NHC
    hc = pid_h % NHC

    # Which sequence owns tile pid_q: the number of b with qsl[b] // BQ + b <= pid_q, minus one.
    count = 0
    for b0 in range(0, num_seqs, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        in_b = offs_b < num_seqs
        qs = tl.load(qsl_ptr + offs_b, mask=in_b, other=0)
        count += tl.sum(((qs // BQ + offs_b <= pid_q) & in_b).to(tl.int32), axis=0)
    seq = count - 1
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    q0 = (pid_q - (q_start // BQ + seq)) * BQ
    if q0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx = seq_len - q_len  # position of this sequence's first query

    # Rows: BQ tokens x HT heads of KV group kvh; row r is token q0 + r // HT, head r % HT.
    offs_m = tl.arange(0, BLOCK_M)
    tok = offs_m // HT
    hg = hc * HT + offs_m % HT  # head within the KV group
    row_ok = (tok < BQ) & (q0 + tok < q_len) & (hg < G)
    q_rows = q_ptr + ((q_start + q0 + tok).to(tl.int64) * stride_qt + (kvh * G + hg) * Dk)
    if QK_CHUNK == BLOCK_DK:
        q = _load_rows(q_rows, row_ok, Dk, BLOCK_DK, True)
    else:
        q = q_rows

    p_lo = ctx + q0                                   # the tile's first and last positions
    p_hi = ctx + tl.minimum(q0 + BQ, q_len) - 1
    split = tl.program_id(2) if SPLIT else 0
    min_keys = min_tiles * BLOCK_N                    # keys per split at least (SPLIT)
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    BN_F: tl.constexpr = BLOCK_N if BLOCK_N_FRESH == 0 else BLOCK_N_FRESH
    if FRESH and ctx == 0:
        # a whole prompt: its keys are this step's rows, contiguous from q_start, in tiles of
        # BN_F keys
        acc, l_i, m_i, n_parts = _prefill_loops(
            acc, l_i, m_i, q, row_ok, p_lo, p_hi, window, split, num_splits, min_keys, bt_ptr,
            k_cache_ptr, v_cache_ptr, kvh, qk_scale, cap_scale, HT, Dk, Dv, BLOCK_M,
            BN_F, BLOCK_DK, BLOCK_DV, BLOCK_SIZE, STRIDE_KB, STRIDE_KS, STRIDE_KH,
            STRIDE_VB, STRIDE_VS, STRIDE_VH, QK_CHUNK, SOFTCAP, WINDOW, DOT_F32, SINGLE_LOOP,
            IDX64, SPLIT, k_desc, v_desc, q_start, True)
    else:
        acc, l_i, m_i, n_parts = _prefill_loops(
            acc, l_i, m_i, q, row_ok, p_lo, p_hi, window, split, num_splits, min_keys, bt_ptr,
            k_cache_ptr, v_cache_ptr, kvh, qk_scale, cap_scale, HT, Dk, Dv, BLOCK_M, BLOCK_N,
            BLOCK_DK, BLOCK_DV, BLOCK_SIZE, STRIDE_KB, STRIDE_KS, STRIDE_KH, STRIDE_VB,
            STRIDE_VS, STRIDE_VH, QK_CHUNK, SOFTCAP, WINDOW, DOT_F32, SINGLE_LOOP, IDX64, SPLIT,
            k_desc, v_desc, q_start, False)

    if not SPLIT:
        _store_tile(out_ptr, acc, l_i, q_start, q0, q_len, kvh, hc, stride_ot, G, HT, BQ, Dv,
                    0, BLOCK_M, BLOCK_DV)
    elif split >= n_parts:
        return  # this tile has fewer keys than the splits need (the q load above, kept where
        #         the unsplit kernel issues it, is wasted then)
    elif n_parts > 1:
        # Partials (unnormalised acc, max, sum) of this split; the last of the tile's n_parts
        # programs to arrive merges them (as the fused decode merge does).
        ng = tl.num_programs(1)
        grp = tl.program_id(0) * ng + pid_h
        row0 = grp.to(tl.int64) * num_splits
        offs_m = tl.arange(0, BLOCK_M)
        offs_dv = tl.arange(0, BLOCK_DV)
        # (a 64-bit tile base and 32-bit offsets within it: fewer address registers)
        tl.store(part_ptr + (row0 + split) * (BLOCK_M * Dv)
                 + (offs_m[:, None] * Dv + offs_dv[None, :]), acc, mask=offs_dv[None, :] < Dv)
        ml_ptr = _stats_ptr(part_ptr, num_splits, BLOCK_M, Dv)
        tl.store(ml_ptr + (row0 + split) * (2 * BLOCK_M) + offs_m, m_i)
        tl.store(ml_ptr + (row0 + split) * (2 * BLOCK_M) + BLOCK_M + offs_m, l_i)
        if _last_arrival(sem_ptr, grp, n_parts):
            _merge_store(part_ptr, ml_ptr, row0, n_parts, out_ptr, q_start, q0, q_len, kvh, hc,
                         stride_ot, G, HT, BQ, Dv, BLOCK_M, BLOCK_DV)
            _reset_arrivals(sem_ptr, grp)
    else:
        _store_tile(out_ptr, acc, l_i, q_start, q0, q_len, kvh, hc, stride_ot, G, HT, BQ, Dv,
                    0, BLOCK_M, BLOCK_DV)


@triton.jit
def _split_share(n_tiles, split, num_splits, min_tiles):
    """A prefill tile's n_tiles KV tiles over at most num_splits programs of >= min_tiles
    tiles each (one program when there are fewer): (first tile, tiles, n_parts) of `split`.
    Runs of cdiv(n_tiles, n_parts) tiles, so no split but the last is short and none is empty;
    splits >= n_parts have no work."""
    want = tl.minimum(tl.maximum(n_tiles // tl.maximum(min_tiles, 1), 1), num_splits)
    per = tl.maximum(tl.cdiv(n_tiles, want), 1)
    n_parts = tl.maximum(tl.cdiv(n_tiles, per), 1)
    return split * per, per, n_parts


@triton.jit
def _merge_store(part_ptr, ml_ptr, row0, n_parts, out_ptr, q_start, q0, q_len, kvh, hc,
                 stride_ot, G: tl.constexpr, HT: tl.constexpr, BQ: tl.constexpr,
                 Dv: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Merge a prefill tile's n_parts partials (rows row0 .. row0 + n_parts - 1 of part_ptr /
    ml_ptr, as the prefill kernel stores them; the caller's own among them) and store the
    output. The caller's accumulator is dead by then: merging the others into it in registers
    spilled on sm90 at d = 256, reading its own partial back does not. Rows go MERGE_M at a
    time (a 128-row tile at d = 256 would hold two 128 x 256 f32 tiles at once: a spill)."""
    MERGE_M: tl.constexpr = 64 if BLOCK_M > 64 else BLOCK_M
    for c in tl.static_range(BLOCK_M // MERGE_M):
        offs_m = c * MERGE_M + tl.arange(0, MERGE_M)
        offs_dv = tl.arange(0, BLOCK_DV)
        m_run = tl.full([MERGE_M], -1.0e30, dtype=tl.float32)
        l_run = tl.zeros([MERGE_M], dtype=tl.float32)
        acc = tl.zeros([MERGE_M, BLOCK_DV], dtype=tl.float32)
        for p in range(0, n_parts):
            row = row0 + p
            # ".cg": from L2, never a stale L1 line (other programs wrote these in this
            # launch). (A 64-bit base per partial and 32-bit offsets within it: fewer address
            # registers.)
            m_p = tl.load(ml_ptr + row * (2 * BLOCK_M) + offs_m, cache_modifier=".cg")
            l_p = tl.load(ml_ptr + row * (2 * BLOCK_M) + BLOCK_M + offs_m, cache_modifier=".cg")
            a_p = tl.load(part_ptr + row * (BLOCK_M * Dv)
                          + (offs_m[:, None] * Dv + offs_dv[None, :]),
                          mask=offs_dv[None, :] < Dv, other=0.0, cache_modifier=".cg")
            m_new = tl.maximum(m_run, m_p)
            alpha = tl.exp2(m_run - m_new)
            beta = tl.exp2(m_p - m_new)
            acc = acc * alpha[:, None] + a_p * beta[:, None]
            l_run = l_run * alpha + l_p * beta
            m_run = m_new
        _store_tile(out_ptr, acc, l_run, q_start, q0, q_len, kvh, hc, stride_ot, G, HT, BQ, Dv,
                    c * MERGE_M, MERGE_M, BLOCK_DV)


@triton.jit
def _store_tile(out_ptr, acc, l_i, q_start, q0, q_len, kvh, hc, stride_ot, G: tl.constexpr,
                HT: tl.constexpr, BQ: tl.constexpr, Dv: tl.constexpr, R0: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Normalise ROWS rows of a prefill tile's accumulator, from its row R0, and store the
    valid ones (row r: token q0 + r // HT, head hc * HT + r % HT of KV group kvh). The row
    indices are formed again (cheap) rather than kept live through the KV loops."""
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_i[:, None]
    offs_m = R0 + tl.arange(0, ROWS)
    offs_dv = tl.arange(0, BLOCK_DV)
    tok = offs_m // HT
    hg = hc * HT + offs_m % HT
    row_ok = (tok < BQ) & (q0 + tok < q_len) & (hg < G)
    o_rows = (q_start + q0 + tok).to(tl.int64) * stride_ot + (kvh * G + hg) * Dv
    tl.store(out_ptr + o_rows[:, None] + offs_dv[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def _decode_partition(seq_len, window, num_splits, min_part, part_align,
                      WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
    """How one sequence's keys are split (the decode kernel and the reduce must agree): keys
    [kv_start, seq_len) are attended; split p covers [base + p * part, base + (p + 1) * part)
    of them, base = kv_start rounded down to BLOCK_N; n_parts = cdiv(seq_len - base, part) <=
    num_splits (and at least 1)."""
    if WINDOW:
        kv_start = tl.maximum(seq_len - window, 0)
    else:
        kv_start = seq_len * 0
    base = (kv_start // BLOCK_N) * BLOCK_N
    span = seq_len - base
    part = tl.cdiv(span, num_splits)
    part = tl.maximum(tl.cdiv(part, part_align) * part_align, min_part)
    n_parts = tl.maximum(tl.cdiv(span, part), 1)
    return kv_start, base, part, n_parts


@triton.jit
def _stats_ptr(part_ptr, num_splits, ROWS: tl.constexpr, Dv: tl.constexpr):
    """Where split partials' (max, sum) rows start: after the [ROWS, Dv] accumulators of every
    (program_id(0), program_id(1), split) row of the grid (decode, its reduce, split prefill)."""
    n_rows = (tl.num_programs(0) * tl.num_programs(1)).to(tl.int64) * num_splits
    return part_ptr + n_rows * (ROWS * Dv)


@triton.jit
def _last_arrival(sem_ptr, grp, n_parts):
    """Count this program in at group grp's arrival counter once all its threads have stored
    their partials (one release by the program): True for the last of the group's n_parts,
    whose acquire then sees every partial. That program merges, then `_reset_arrivals`, so
    the counters are zero between launches (graph replays need no memset)."""
    tl.debug_barrier()
    arrived = tl.atomic_add(sem_ptr + grp, 1, sem="acq_rel", scope="gpu")
    return arrived == n_parts - 1


@triton.jit
def _reset_arrivals(sem_ptr, grp):
    tl.atomic_xchg(sem_ptr + grp, 0, sem="relaxed", scope="gpu")


@triton.jit
def _combine(acc_ptr, ml_ptr, row0, n_parts, HT: tl.constexpr, Dv: tl.constexpr,
             BLOCK_HT: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT_CHUNK: tl.constexpr):
    """Merge the partials of rows row0 .. row0 + n_parts - 1 (one group's splits) into the
    normalised output [BLOCK_HT, BLOCK_DV] fp32: an online softmax over the splits, SPLIT_CHUNK
    splits per step. acc_ptr: [rows, BLOCK_HT, Dv] f32; ml_ptr: [rows, 2, BLOCK_HT] f32."""
    offs_s = tl.arange(0, SPLIT_CHUNK)
    offs_h = tl.arange(0, BLOCK_HT)
    offs_d = tl.arange(0, BLOCK_DV)
    h_ok = offs_h < HT
    d_ok = offs_d < Dv
    m_run = tl.full([BLOCK_HT], -1.0e30, dtype=tl.float32)
    l_run = tl.zeros([BLOCK_HT], dtype=tl.float32)
    acc = tl.zeros([BLOCK_HT, BLOCK_DV], dtype=tl.float32)
    for s0 in range(0, n_parts, SPLIT_CHUNK):
        rows = row0 + s0 + offs_s                       # [SC] int64
        ok = ((s0 + offs_s) < n_parts)[:, None] & h_ok[None, :]
        ml = ml_ptr + rows[:, None] * (2 * BLOCK_HT) + offs_h[None, :]
        # ".cg": from L2, never a stale L1 line (other programs wrote these in this launch).
        m = tl.load(ml, mask=ok, other=-1.0e30, cache_modifier=".cg")
        lp = tl.load(ml + BLOCK_HT, mask=ok, other=0.0, cache_modifier=".cg")
        a = tl.load(acc_ptr + ((rows[:, None] * BLOCK_HT + offs_h[None, :]) * Dv)[:, :, None]
                    + offs_d[None, None, :], mask=ok[:, :, None] & d_ok[None, None, :], other=0.0,
                    cache_modifier=".cg")
        m_new = tl.maximum(m_run, tl.max(m, 0))
        alpha = tl.exp2(m_run - m_new)
        w = tl.exp2(m - m_new[None, :])                 # [SC, BLOCK_HT]; 0 where masked
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * a, 0)
        l_run = l_run * alpha + tl.sum(w * lp, 0)
        m_run = m_new
    l_run = tl.where(l_run > 0.0, l_run, 1.0)
    return acc / l_run[:, None]


@triton.jit
def _store_group(out_ptr, t_idx, stride_ot, o, kvh, hc, xq_ptr, xs_ptr, stride_xq, NCH,
                 G: tl.constexpr, HT: tl.constexpr, Dv: tl.constexpr, ROWS: tl.constexpr,
                 BLOCK_DV: tl.constexpr, XQ_V: tl.constexpr, XQ_E: tl.constexpr):
    """Store o [ROWS, BLOCK_DV] as heads kvh*G + hc*HT + r (r < HT, head < G) of token t_idx.
    XQ_E > 0 (Dv == BLOCK_DV, a multiple of XQ_V * XQ_E): also the int8 codes of those heads
    as stored, for the GEMV's X_PRE path (xquant.py; a head's chunks are whole)."""
    offs_r = tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_DV)
    hg = hc * HT + offs_r
    ok = (offs_r < HT) & (hg < G)
    ptrs = out_ptr + t_idx * stride_ot + ((kvh * G + hg) * Dv)[:, None] + offs_d[None, :]
    o = o.to(out_ptr.dtype.element_ty)
    tl.store(ptrs, o, mask=ok[:, None] & (offs_d[None, :] < Dv))
    if XQ_E > 0:
        r0 = offs_r.to(tl.int64) * 0 + t_idx
        _xq_store(o.to(tl.float32), ok, (kvh * G + hg) * (Dv // (XQ_V * XQ_E)), NCH, xq_ptr,
                  xs_ptr, r0 * stride_xq, r0 * NCH, XQ_V, XQ_E)


@triton.jit
def _rope_pairs(ROT: tl.constexpr, NEOX: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per feature j < BLOCK_D of a head: (pair index, is the pair's first element, is rotated,
    partner feature) for a rotation by RopeSpec (rope.py): the pair (a, b) becomes
    (a cos - b sin, b cos + a sin); features >= ROT pass through (partner j)."""
    j = tl.arange(0, BLOCK_D)
    HALF: tl.constexpr = ROT // 2
    if NEOX:
        first = j < HALF
        p = tl.where(first, j, j - HALF)
        partner = tl.where(first, j + HALF, j - HALF)
    else:
        first = (j % 2) == 0
        p = j // 2
        partner = j ^ 1
    rot = j < ROT
    return p, first, rot, tl.where(rot, partner, j)


@triton.jit
def _rope_angles(pos, inv, first, rot):
    """(cos, signed sin) per feature from the position and the features' inv_freq (0 past ROT):
    rotated x_j = x_j cos + x_partner(j) sin', sin' = -sin on a pair's first element. The angle
    is rope.py's (float32 product), cos/sin by `_sincos`."""
    cs, sn = _sincos(pos.to(tl.float32) * inv)
    sn = tl.where(rot, tl.where(first, -sn, sn), 0.0)
    cs = tl.where(rot, cs, 1.0)
    return cs, sn


@triton.jit
def _rotate(x, x_partner, cs, sn):
    """x rotated in float32: x cos + x[partner] sin' (`_rope_pairs`, `_rope_angles`)."""
    return x.to(tl.float32) * cs + x_partner.to(tl.float32) * sn


@triton.jit(do_not_specialize=_DECODE_DNS)
def _attn_decode_kernel(
    q_ptr,             # [T, H*Dk]   row stride stride_qt (T <= B: at most one query a sequence)
    k_cache_ptr,       # [NB, BS, Hkv, Dk]  strides (STRIDE_KB, STRIDE_KS, STRIDE_KH, 1)
    v_cache_ptr,       # [NB, BS, Hkv, Dv]  strides (STRIDE_VB, STRIDE_VS, STRIDE_VH, 1)
    out_ptr,           # [T, H*Dv]   row stride stride_ot
    part_ptr,          # f32 [R, BLOCK_HT, Dv] partial accs, then [R, 2, BLOCK_HT] (max, sum);
                       #   R = B * NG * S, row (b * NG + g) * S + split (used when SPLIT)
    sem_ptr,           # [>= B*NG] i32 arrival counters, zero between launches (FUSED_REDUCE)
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    block_tables_ptr,  # [B, W] i32  row stride stride_bt
    xq_ptr, xs_ptr,    # XQ_E > 0: the output's int8 codes (uint8) and chunk scales (xquant.py)
    kn_ptr, vn_ptr,    # ROPE: this step's k [T, Hkv*Dk] / v [T, Hkv*Dv] rows (stride_kn/_vn),
    pos_ptr, slot_ptr, inv_ptr,  # positions [T], cache slots [T] int64, inv_freq [ROT/2] f32
    num_splits, min_part, part_align,
    stride_qt, stride_ot, stride_bt, stride_xq, NCH,
    stride_kn, stride_vn, num_slots,
    qk_scale, cap_scale, window,
    G: tl.constexpr, HT: tl.constexpr, NHC: tl.constexpr,
    Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_G: tl.constexpr,     # dot rows: HT heads padded to >= 16
    BLOCK_HT: tl.constexpr,    # partial rows per group: HT padded to a power of two
    BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    STRIDE_KB: tl.constexpr, STRIDE_KS: tl.constexpr, STRIDE_KH: tl.constexpr,
    STRIDE_VB: tl.constexpr, STRIDE_VS: tl.constexpr, STRIDE_VH: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,         # num_splits may be > 1
    FUSED_REDUCE: tl.constexpr,  # the last split of a group merges the partials
    SPLIT_CHUNK: tl.constexpr,   # splits merged per step
    DOT_F32: tl.constexpr,
    QK_CHUNK: tl.constexpr,      # head-dim chunk of Q K^T (BLOCK_DK: Q stays in registers)
    V_EARLY: tl.constexpr,       # load V with K (needs QK_CHUNK == BLOCK_DK), else after softmax
    PDL: tl.constexpr,           # launched with programmatic dependent launch (pdl.py)
    XQ_V: tl.constexpr = 0,      # XQ_E > 0: also quantize the output (see _store_group)
    XQ_E: tl.constexpr = 0,
    ROPE: tl.constexpr = False,  # q, k unrotated: rope fused in (see "Rope fused into decode")
    ROT: tl.constexpr = 0,       # ROPE: rotated features per head, pairs by NEOX (RopeSpec)
    NEOX: tl.constexpr = False,
):
    pdl_launch(PDL)
    # Every program, before the metadata loads and the early exit below: q, the lengths, the
    # cache and the partials/counters all depend on earlier kernels.
    pdl_wait(PDL)
    seq = tl.program_id(0)
    gid = tl.program_id(1)  # KV head x head chunk
    split = tl.program_id(2)

    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start, base, part, n_parts = _decode_partition(seq_len, window, num_splits, min_part,
                                                      part_align, WINDOW, BLOCK_N)
    if (q_len <= 0) | (split >= n_parts):
        return  # a padding sequence, or a split this sequence's length does not reach
    lo = base + split * part
    hi = tl.minimum(lo + part, seq_len)
    lo = tl.maximum(lo, kv_start)
    kvh = gid // NHC
    hc = gid % NHC

    offs_g = tl.arange(0, BLOCK_G)
    hg = hc * HT + offs_g
    row_ok = (offs_g < HT) & (hg < G)
    t_idx = q_start.to(tl.int64)
    q_rows = q_ptr + t_idx * stride_qt + (kvh * G + hg) * Dk
    # ROPE: the query's own key is not in the cache yet: the cache loop ends before it
    hi_kv = tl.minimum(hi, seq_len - 1) if ROPE else hi
    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head_off = kvh * STRIDE_KH
    v_head_off = kvh * STRIDE_VH
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N)
    # Tiles start at multiples of BLOCK_N (keys before lo are masked off). The next tile's
    # block ids are loaded one tile ahead and carried (see the prefill kernel's unmasked loop).
    # (The first ids are requested before the rope work below, which their latency then hides.)
    first = (lo // BLOCK_N) * BLOCK_N
    blk = _tile_ids(bt_ptr, first, hi_kv, BLOCK_N, BLOCK_SIZE, True)
    if ROPE:
        # q rotated here, rounded to its dtype as the rope kernel stores it. The split that ends
        # at the query adds its own key (rotated, rounded to the cache dtype as stored) and value
        # after the cache loop, from this step's k / v rows. (The cos/sin chain waits for the
        # position's load and ptxas issues the q / k loads after it: one memory round trip more
        # than the plain kernel before the first tile. Anchoring the chain on those loads, as the
        # GEMV does, measured no better at d = 128 and worse with the reductions it needs.)
        tl.static_assert(QK_CHUNK == BLOCK_DK, "fused rope keeps q in registers")
        pair, first_el, rot, partner = _rope_pairs(ROT, NEOX, BLOCK_DK)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        qm = row_ok[:, None] & (offs_dk < Dk)[None, :]
        qx = tl.load(q_rows[:, None] + offs_dk[None, :], mask=qm, other=0.0)
        qp = tl.load(q_rows[:, None] + partner[None, :], mask=qm, other=0.0)
        k_row = kn_ptr + t_idx * stride_kn + kvh * Dk
        own_k = (offs_dk < Dk) & (offs_dk * 0 + hi == seq_len)   # (a vector mask: interpreter)
        kx = tl.load(k_row + offs_dk, mask=own_k, other=0.0)
        kp = tl.load(k_row + partner, mask=own_k, other=0.0)
        vr = tl.load(vn_ptr + t_idx * stride_vn + kvh * Dv + offs_dv,
                     mask=(offs_dv < Dv) & (offs_dv * 0 + hi == seq_len),
                     other=0.0).to(v_cache_ptr.dtype.element_ty)
        pos = tl.load(pos_ptr + t_idx)
        inv = tl.load(inv_ptr + pair, mask=rot, other=0.0)
        cs, sn = _rope_angles(pos, inv, first_el, rot)
        q = _rotate(qx, qp, cs[None, :], sn[None, :]).to(q_ptr.dtype.element_ty)
    elif QK_CHUNK == BLOCK_DK:
        q = _load_rows(q_rows, row_ok, Dk, BLOCK_DK, True)
    else:
        q = q_rows
    for start in range(first, hi_kv, BLOCK_N):
        blk_next = _tile_ids(bt_ptr, start + BLOCK_N, hi_kv, BLOCK_N, BLOCK_SIZE, True)
        offs_n = start + offs_n0
        in_kv = (offs_n >= lo) & (offs_n < hi_kv)
        slot = offs_n % BLOCK_SIZE
        k_rows = k_cache_ptr + (blk * STRIDE_KB + (slot * STRIDE_KS + k_head_off))
        v_rows = v_cache_ptr + (blk * STRIDE_VB + (slot * STRIDE_VS + v_head_off))
        if V_EARLY:
            # K and V requested back to back: one memory round trip per tile, not two (without
            # software pipelining; with it both are async copies issued ahead anyway).
            k = _load_rows(k_rows, in_kv, Dk, BLOCK_DK, True)
            v = _load_rows(v_rows, in_kv, Dv, BLOCK_DV, True)
            qk = _dot(q, tl.trans(k), DOT_F32)
        elif QK_CHUNK == BLOCK_DK:
            k = _load_rows(k_rows, in_kv, Dk, BLOCK_DK, True)
            qk = _dot(q, tl.trans(k), DOT_F32)
        else:
            qk = _qk_chunked(q, row_ok, k_rows, in_kv, Dk, BLOCK_G, BLOCK_N, BLOCK_DK, QK_CHUNK,
                             True, DOT_F32)
        s = _scores(qk, qk_scale, cap_scale, SOFTCAP)
        s = tl.where(in_kv[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if not V_EARLY:
            v = _load_rows(v_rows, in_kv, Dv, BLOCK_DV, True)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32)
        m_i = m_new
        blk = blk_next

    if ROPE:
        if hi == seq_len:
            # the query's own key and value (loaded above) join the softmax; the group's first
            # head chunk also stores them into the cache at the token's slot for later steps
            kr = _rotate(kx, kp, cs, sn).to(k_cache_ptr.dtype.element_ty)
            s_c = _scores(tl.sum(q.to(tl.float32) * kr.to(tl.float32)[None, :], 1), qk_scale,
                          cap_scale, SOFTCAP)
            m_new = tl.maximum(m_i, s_c)
            alpha = tl.exp2(m_i - m_new)
            p_c = tl.exp2(s_c - m_new)
            l_i = l_i * alpha + p_c
            p_v = p_c.to(v_cache_ptr.dtype.element_ty).to(tl.float32)
            acc = acc * alpha[:, None] + p_v[:, None] * vr.to(tl.float32)[None, :]
            m_i = m_new
            slot = tl.load(slot_ptr + t_idx).to(tl.int64)
            if (hc == 0) & (slot >= 0) & (slot < num_slots):
                s32 = slot.to(tl.int32)     # num_slots < 2^31 (checked on the host)
                blk_c = (s32 // BLOCK_SIZE).to(tl.int64)
                off_c = (s32 % BLOCK_SIZE).to(tl.int64)
                tl.store(k_cache_ptr + blk_c * STRIDE_KB + off_c * STRIDE_KS + k_head_off
                         + offs_dk, kr, mask=offs_dk < Dk)
                tl.store(v_cache_ptr + blk_c * STRIDE_VB + off_c * STRIDE_VS + v_head_off
                         + offs_dv, vr, mask=offs_dv < Dv)

    if SPLIT:
        if n_parts > 1:
            ng = tl.num_programs(1)
            grp = seq * ng + gid
            row = grp.to(tl.int64) * num_splits + split
            offs_dv = tl.arange(0, BLOCK_DV)
            acc_rows = part_ptr + (row * BLOCK_HT + offs_g) * Dv
            tl.store(acc_rows[:, None] + offs_dv[None, :], acc,
                     mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
            ml_ptr = _stats_ptr(part_ptr, num_splits, BLOCK_HT, Dv)
            tl.store(ml_ptr + row * (2 * BLOCK_HT) + offs_g, m_i, mask=row_ok)
            tl.store(ml_ptr + row * (2 * BLOCK_HT) + BLOCK_HT + offs_g, l_i, mask=row_ok)
            if FUSED_REDUCE:
                if _last_arrival(sem_ptr, grp, n_parts):
                    o = _combine(part_ptr, ml_ptr, grp.to(tl.int64) * num_splits, n_parts, HT,
                                 Dv, BLOCK_HT, BLOCK_DV, SPLIT_CHUNK)
                    _store_group(out_ptr, t_idx, stride_ot, o, kvh, hc, xq_ptr, xs_ptr,
                                 stride_xq, NCH, G, HT, Dv, BLOCK_HT, BLOCK_DV, XQ_V, XQ_E)
                    _reset_arrivals(sem_ptr, grp)
        else:
            l_i = tl.where(l_i > 0.0, l_i, 1.0)
            _store_group(out_ptr, t_idx, stride_ot, acc / l_i[:, None], kvh, hc, xq_ptr, xs_ptr,
                         stride_xq, NCH, G, HT, Dv, BLOCK_G, BLOCK_DV, XQ_V, XQ_E)
    else:
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        _store_group(out_ptr, t_idx, stride_ot, acc / l_i[:, None], kvh, hc, xq_ptr, xs_ptr,
                     stride_xq, NCH, G, HT, Dv, BLOCK_G, BLOCK_DV, XQ_V, XQ_E)


@triton.jit(do_not_specialize=["num_splits"])
def _attn_reduce_kernel(
    out_ptr,           # [T, H*Dv]   row stride stride_ot
    part_ptr,          # f32 partials, laid out as in _attn_decode_kernel
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    xq_ptr, xs_ptr,    # XQ_E > 0: the output's int8 codes and scales (see _store_group)
    num_splits, min_part, part_align, stride_ot, window, stride_xq, NCH,
    G: tl.constexpr, HT: tl.constexpr, NHC: tl.constexpr, Dv: tl.constexpr,
    BLOCK_HT: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    WINDOW: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
    PDL: tl.constexpr,           # launched with programmatic dependent launch (pdl.py)
    XQ_V: tl.constexpr = 0,
    XQ_E: tl.constexpr = 0,
):
    """One program per (sequence, group) of the decode grid: merge its n_parts partials (groups
    with one split were written by the decode kernel itself)."""
    pdl_launch(PDL)
    pdl_wait(PDL)  # before the loads and the early exit: the partials are the decode kernel's
    seq = tl.program_id(0)
    gid = tl.program_id(1)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    _, _, _, n_parts = _decode_partition(seq_len, window, num_splits, min_part, part_align,
                                         WINDOW, BLOCK_N)
    if (q_len <= 0) | (n_parts <= 1):
        return
    ng = tl.num_programs(1)
    grp = seq * ng + gid
    o = _combine(part_ptr, _stats_ptr(part_ptr, num_splits, BLOCK_HT, Dv),
                 grp.to(tl.int64) * num_splits, n_parts, HT, Dv, BLOCK_HT, BLOCK_DV, SPLIT_CHUNK)
    _store_group(out_ptr, q_start.to(tl.int64), stride_ot, o, gid // NHC, gid % NHC, xq_ptr,
                 xs_ptr, stride_xq, NCH, G, HT, Dv, BLOCK_HT, BLOCK_DV, XQ_V, XQ_E)


# ----------------------------------------------------------------------------------------------
# launch configs


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


_INTERPRET = env.interpreting()  # as the kernels were decorated (triton.jit reads it at import)


def _device_info():
    from forge.runtime import device

    return device.detect()


def _kind(info) -> str:
    """'interp' (no GPU: the interpreter), 'nvidia', 'cdna' (AMD wave64, MFMA) or 'rdna' (AMD
    wave32, WMMA)."""
    if info is None:
        return "interp"
    if not info.is_amd:
        return "nvidia"
    return "cdna" if info.warp_size == 64 else "rdna"


def _prefill_default(kind: str, dk: int, elem: int) -> dict:
    """Launcher default for the prefill kernel (the tuning tables override it per arch).

    nvidia: 128-row tiles on two wgmma warpgroups (8 warps), 3-stage cp.async pipelining of the
    K/V tiles, the KV loop split into unmasked and masked parts. cdna: 64 KiB LDS, so one stage
    and narrower K/V tiles at head dim 256. rdna: WMMA keeps every K/V operand per wave in VGPRs
    (256 max): small tiles and one loop body (gfx1100 ISA: D=128 at 64x16 needs ~245 VGPRs;
    larger tiles or two loop bodies spill).
    SINGLE_LOOP (0/1): one masked loop instead of two. QK_CHUNK: 0 (Q K^T in one dot) or a
    power of two < head dim (chunked dots, Q reloaded per KV tile: fewer registers). HT: query
    heads of a KV group packed into one tile's rows, 0 for the whole group. KV_SPLITS: at
    most this many programs share one tile's keys when the grid has fewer tiles than the device
    has CUs (1: never), each taking at least KV_SPLIT_MIN keys (`num_prefill_splits`). H100,
    Gemma 3 heads at the sm90 d256 tile (bench_attention --sweep, run 23): KV_SPLIT_MIN 256 led
    (us at 512 queries after 1,024 / 4,096 cached keys and a 2,048-token prompt: 25.9 / 49.9 /
    54.9; 512: 35.1 / 50.3 / 58.5; no splits: 53.6 / 148.9 / 69.9). A tile of <= 512 keys (a
    512-token prompt, a 512-key window) has at most 7 unmasked 64-key tiles and does not split,
    but the grid still has its extra programs (the host sees only the longest sequence and the
    window), which load Q and exit: 0.5-1 us more at those shapes. CDNA / RDNA: the same keys,
    with the merge fused (one launch) as on NVIDIA; not measured there.
    BLOCK_N_FRESH: keys per tile of the whole prompts that read this step's rows by tensor-memory
    copies (`attention(..., fresh=)`, Hopper), 0 for BLOCK_N: a tile the copies suit may not
    suit the paged gather, and one launch serves both (H100, Llama-3-8B heads, 128 x 8 warps x
    3 stages, run 28: copies in 128-key tiles 1,128 / 16,792 us at 8,192 / 32,768 tokens
    against 64-key ones 1,166 / 17,634, and the gather at 64 keys 1,200 / 18,310-18,375).
    """
    big = dk > 128
    if kind == "interp":  # modest tiles; launch options unused
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "SINGLE_LOOP": 0,
                "QK_CHUNK": 0, "HT": 0, "KV_SPLITS": 16, "KV_SPLIT_MIN": 256,
                "BLOCK_N_FRESH": 0}
    if kind == "nvidia":
        # sm90 ISA (bf16): d128 128x64 / 8 warps / 3 stages: 216 regs, 129 KiB smem, K/V two
        # tiles ahead; d64 at 4 warps sits at 255 regs (8: 159); d256 64x64 spilled at 2 and 3
        # stages with 64-bit cache offsets, 64x32 with 8 warps and 3 stages: 224 regs, no
        # spills, 129 KiB. (sm90.json's entries, swept with 32-bit offsets, take d64 to 64x128
        # at 4 warps and d256 to 64x64.)
        cfg = {"BLOCK_M": 64 if big else 128, "BLOCK_N": 32 if big else 64,
               "num_warps": 8, "num_stages": 3, "SINGLE_LOOP": 0, "QK_CHUNK": 0}
    elif kind == "cdna":
        # 8 waves keep the 128x64 (d <= 128) and 64x32 (d = 256) tiles under the 256 VGPRs
        # that waves_per_eu=2 allows (4 waves spill a few at d = 128).
        cfg = {"BLOCK_M": 64 if big else 128, "BLOCK_N": 32 if big else 64,
               "num_warps": 4 if dk <= 64 else 8, "num_stages": 1, "waves_per_eu": 2,
               "SINGLE_LOOP": 1, "QK_CHUNK": 0}
    else:
        # d = 256: Q K^T in 64-wide chunks (Q reloaded from cache) frees the registers that
        # hold Q, which buys 32-row tiles (gfx1100: ~194 VGPRs; whole-Q 16x16 needs ~254).
        cfg = {"BLOCK_M": 32 if big else 64, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1,
               "SINGLE_LOOP": 1, "QK_CHUNK": 64 if big else 0}
    if elem == 4:  # fp32: twice the bytes, FMA dots (no tensor cores): small tiles
        cfg["BLOCK_N"] = max(16, cfg["BLOCK_N"] // 2)
        cfg["BLOCK_M"] = 16 if kind == "rdna" else 64
        if kind == "nvidia":  # sm90: 64x32 one-dot fp32 tiles at 4 warps spilled 1-70 KB;
            # 8 warps with 32-wide chunks above d64 (180-246 regs), one dot at d64 (110): none
            cfg["num_warps"], cfg["QK_CHUNK"] = 8, 32 if dk > 64 else 0
        if kind == "rdna":  # no fp32 WMMA: FMA dots hold a K-row per thread; chunk the head dim
            cfg["num_warps"], cfg["QK_CHUNK"] = 8, 32
    cfg.update(HT=0, KV_SPLITS=16, KV_SPLIT_MIN=256, BLOCK_N_FRESH=0)
    return cfg


def _fit_shared(cfg: dict, dk: int, dv: int, elem: int, lds_bytes: int) -> dict:
    """Shrink an NVIDIA prefill default until its shared memory (an upper estimate: the Q tile
    plus num_stages K and V tiles) fits the device (99 KiB on sm86/sm89, 227 KiB on sm90)."""
    cfg = dict(cfg)

    def need() -> int:
        return elem * (cfg["BLOCK_M"] * dk + cfg["num_stages"] * cfg["BLOCK_N"] * (dk + dv))

    # Keep 3 stages as long as possible: the K/V tiles are then loaded two tiles ahead (with 2
    # stages the pipeliner single-buffers them and waits for each tile's load).
    while need() > lds_bytes:
        if cfg["num_stages"] > 3:
            cfg["num_stages"] -= 1
        elif cfg["BLOCK_N"] > 32:
            cfg["BLOCK_N"] //= 2
        elif cfg["num_stages"] > 2:
            cfg["num_stages"] -= 1
        elif cfg["num_stages"] > 1:
            cfg["num_stages"] -= 1
        elif cfg["BLOCK_N"] > 16:
            cfg["BLOCK_N"] //= 2
        elif cfg["BLOCK_M"] > 16:
            cfg["BLOCK_M"] //= 2
        else:
            break
    return cfg


def _decode_default(kind: str, dk: int, elem: int) -> dict:
    """Launcher default for the decode kernel (see the module docstring for the split scheme).

    BLOCK_N keys per loop step; MIN_PARTITION keys per split at least (rounded up to BLOCK_N);
    SPLITS_PER_CU programs per CU the split count aims at for the whole batch; MAX_SPLITS caps
    the splits of one sequence (the merge reads them SPLIT_CHUNK at a time, so more splits mean
    a longer serial merge); FUSED_REDUCE (0/1): the last split merges (one launch) instead of
    `_attn_reduce_kernel` (two); V_EARLY (0/1): issue a tile's V load with its K load (one
    memory round trip without software pipelining) or after the softmax (fewer live registers:
    gfx1100 d128 with V early needs 250 VGPRs and spills, after the softmax 198). ROPE_MIN_B:
    `attention(..., rope=...)` at decode fuses the rope into this kernel when the batch has at
    least this many sequences, else runs the rope kernel first (see "Rope fused into decode").

    A decode step is latency-bound until the batch's KV is several MiB: short splits (one or two
    64-key tiles) spread a batch-1 context of 512 over 64 programs instead of 8, and the merge
    is fused so that a split costs no second launch. On CDNA3 the fused merge's agent-scope
    release writes back the XCD's L2 (gfx942 has one L2 per XCD), hence a separate reduce there
    until measured. fp32 halves BLOCK_N (FMA dots, twice the bytes).
    """
    big = dk > 128
    block_n = 32 if kind in ("rdna", "interp") or big else 64
    # rdna, d = 256: chunked Q K^T as in prefill (gfx1100 ~205 VGPRs at BLOCK_N 32).
    cfg = {"BLOCK_N": block_n, "num_warps": 4, "num_stages": 2 if kind == "nvidia" else 1,
           "MIN_PARTITION": block_n, "SPLITS_PER_CU": 4, "MAX_SPLITS": 64, "SPLIT_CHUNK": 16,
           "FUSED_REDUCE": 0 if kind == "cdna" else 1,
           "QK_CHUNK": 64 if kind == "rdna" and big else 0,
           "V_EARLY": 0 if kind == "rdna" else 1, "ROPE_MIN_B": 1}
    if elem == 4:
        cfg["BLOCK_N"] = max(16, block_n // 2)
        cfg["MIN_PARTITION"] = cfg["BLOCK_N"]
        if kind == "rdna":  # see _prefill_default
            cfg["num_warps"], cfg["QK_CHUNK"] = 8, 32
        if kind == "nvidia":  # sm90 d128 fp32 split+softcap: 4 warps spill 36 B, 8: 93 regs
            cfg["num_warps"] = 8
    return cfg


def _reduce_default(kind: str) -> dict:
    return {"SPLIT_CHUNK": 16, "num_warps": 2 if kind == "cdna" else 4, "num_stages": 1}


def _split_chunk(want: int, block_ht: int, block_dv: int, num_warps: int) -> int:
    """Splits merged per step: at most `want`, and a [chunk, BLOCK_HT, BLOCK_DV] fp32 tile of at
    most 64 values per thread (warps of 32 lanes: the smaller warp is the tighter bound)."""
    budget = 64 * 32 * max(1, num_warps) // (block_ht * block_dv)
    c = 2
    while c * 2 <= min(max(2, int(want)), max(2, budget)):
        c *= 2
    return c


def _qk_chunk(cfg: dict, block_dk: int) -> int:
    """The QK_CHUNK constexpr: BLOCK_DK (one dot) unless the config asks for a smaller power of
    two (at least 16, tl.dot's minimum)."""
    c = int(cfg.get("QK_CHUNK", 0))
    if c <= 0 or c >= block_dk:
        return block_dk
    if c & (c - 1) or c < 16:
        raise ValueError(f"QK_CHUNK: must be 0 or a power of two >= 16, got {c}")
    return c


def _launch_opts(cfg: dict, kind: str) -> dict:
    """Triton launch options of a config; the AMD-only ones only when running on AMD."""
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    if kind in ("cdna", "rdna"):
        for k in tuning.AMD_ONLY_KEYS:
            if k in cfg:
                opts[k] = cfg[k]
    return opts


@functools.lru_cache(maxsize=256)
def _decode_plan(kind: str, dk: int, dv: int, G: int, elem: int) -> dict:
    """Everything about a decode launch that depends only on the model and the device."""
    cfg = tuning.get_config("attn_decode_f32" if elem == 4 else "attn_decode",
                            tuning.bucket(d=dk, g=G), _decode_default(kind, dk, elem))
    ht = min(G, 64)
    block_n = int(cfg["BLOCK_N"])
    block_dv = max(16, _pow2(dv))
    block_ht = max(2, _pow2(ht))
    block_dk = max(16, _pow2(dk))
    qk_chunk = _qk_chunk(cfg, block_dk)
    min_part = max(1, int(cfg["MIN_PARTITION"]))
    return {
        "HT": ht, "NHC": -(-G // ht), "BLOCK_G": max(16, _pow2(ht)), "BLOCK_HT": block_ht,
        "BLOCK_N": block_n, "BLOCK_DK": block_dk, "BLOCK_DV": block_dv, "QK_CHUNK": qk_chunk,
        "V_EARLY": bool(int(cfg["V_EARLY"])) and qk_chunk == block_dk,  # needs Q in registers
        "ROPE_OK": qk_chunk == block_dk,    # fused rope: the same
        "rope_min_b": max(1, int(cfg["ROPE_MIN_B"])),
        "min_part": -(-min_part // block_n) * block_n,
        "splits_per_cu": max(1, int(cfg["SPLITS_PER_CU"])),
        "max_splits": max(1, min(int(cfg["MAX_SPLITS"]), MAX_SPLITS)),
        "fused": bool(int(cfg["FUSED_REDUCE"])),
        "SPLIT_CHUNK": _split_chunk(int(cfg["SPLIT_CHUNK"]), block_ht, block_dv,
                                    int(cfg["num_warps"])),
        "opts": _launch_opts(cfg, kind),
    }


@functools.lru_cache(maxsize=256)
def _reduce_plan(kind: str, dv: int, ht: int, splits: int) -> dict:
    cfg = tuning.get_config("attn_reduce", tuning.bucket(d=dv, s=splits), _reduce_default(kind))
    block_dv = max(16, _pow2(dv))
    return {"SPLIT_CHUNK": _split_chunk(int(cfg["SPLIT_CHUNK"]), max(2, _pow2(ht)), block_dv,
                                        int(cfg["num_warps"])),
            "opts": _launch_opts(cfg, kind)}


def _tile_rows(G: int, block_m: int, ht: int) -> dict:
    """How a prefill tile's BLOCK_M rows split: HT query heads of one KV group (the `HT` key; 0,
    the default, for all G, so each K/V tile serves the whole group; fewer give a tile more
    tokens), NHC tiles per group, BQ tokens per tile."""
    ht = max(1, min(G, block_m, int(ht) or G))
    return {"HT": ht, "NHC": -(-G // ht), "BQ": block_m // ht}


def _prefill_plan(kind: str, dk: int, dv: int, G: int, elem: int, lds_bytes: int,
                  tokens: int, keys: int) -> dict:
    """The prefill launch plan for a call of `tokens` query tokens (q's rows: the bucket's `t`)
    whose queries attend at most `keys` keys (the bucket's `kv`: the longest sequence the
    launcher is told of, max_seq_len, capped by the sliding window). A table may so give a
    few-tile chunk and a long prompt different tiles, and a sliding-window layer and a global
    one (Gemma 3 heads, H100: 2048 queries after 4096 keys want 128-row tiles on a global layer,
    64-row ones under the 512-key window; bench/results/run24)."""
    return _prefill_plan_at(kind, dk, dv, G, elem, lds_bytes, _pow2(tokens), _pow2(keys))


def prefill_keys(max_kv: int, window: int) -> int:
    """The bucket's `kv` of a prefill call: the keys a query may attend at most."""
    return min(max_kv, window) if window > 0 else max_kv


@functools.lru_cache(maxsize=256)
def _prefill_plan_at(kind: str, dk: int, dv: int, G: int, elem: int, lds_bytes: int,
                     t: int, kv: int) -> dict:
    default = _prefill_default(kind, dk, elem)
    if kind == "nvidia":
        default = _fit_shared(default, dk, dv, elem, lds_bytes)
    cfg = tuning.get_config("attn_prefill_f32" if elem == 4 else "attn_prefill",
                            tuning.bucket(d=dk, g=G, kv=kv, t=t), default)
    block_m = int(cfg["BLOCK_M"])
    block_n = int(cfg["BLOCK_N"])
    block_n_fresh = int(cfg["BLOCK_N_FRESH"]) or block_n
    for key, v in (("BLOCK_M", block_m), ("BLOCK_N", block_n),
                   ("BLOCK_N_FRESH", block_n_fresh)):
        if v < 16:  # tl.dot's minimum (the tables check for powers of two)
            raise ValueError(f"attn_prefill {key}: must be at least 16, got {v}")
    block_dk = max(16, _pow2(dk))
    kv_min = max(1, -(-int(cfg["KV_SPLIT_MIN"]) // block_n)) * block_n  # whole KV tiles
    return {**_tile_rows(G, block_m, cfg["HT"]), "BLOCK_M": block_m,
            "BLOCK_N": block_n, "BLOCK_DK": block_dk,
            "BLOCK_DV": max(16, _pow2(dv)), "SINGLE_LOOP": bool(int(cfg["SINGLE_LOOP"])),
            "QK_CHUNK": _qk_chunk(cfg, block_dk), "opts": _launch_opts(cfg, kind),
            "BLOCK_N_FRESH": block_n_fresh,
            "kv_splits": max(1, min(int(cfg["KV_SPLITS"]), MAX_SPLITS)),
            "kv_split_min": kv_min, "min_tiles": kv_min // block_n}


def num_prefill_splits(n_programs: int, max_kv: int, plan: dict, num_cus: int) -> int:
    """How many programs share a prefill tile's keys (grid axis 2), from host ints. A prefill
    tile fills an SM, so: a grid of at most half the CUs takes as many splits as keep it within
    one program per CU (a second wave of programs as long as the first would cost as much as
    the first: Gemma 3 heads on an H100, 1024 queries after 4096 keys at 64x64 tiles, 65 tiles
    x 3 splits 118.7 us, x 2 91.9-95.4; a whole 1024-token prompt, whose causal tiles differ
    in length, loses: 25.5 -> 28.8); a larger one, still short of the CUs, splits in two (its
    tiles differ in length, so the second wave is short: 2048 queries after 0 / 4096 keys, 129
    tiles, 55.4 / 187.8 us split in two, 71.8 / 205.5 whole; bench/results/run24). Splits
    hold at least KV_SPLIT_MIN of the max_kv keys a tile may attend (the longest sequence, or
    less under a sliding window); at most KV_SPLITS. Each tile splits its own keys on the
    device (`_split_share`): short tiles stay whole, extra programs exit."""
    if plan["kv_splits"] <= 1 or n_programs >= num_cus:
        return 1
    want = max(num_cus // max(1, n_programs), 2)
    return max(1, min(want, max(1, max_kv) // plan["kv_split_min"], plan["kv_splits"]))


def clear_config_cache() -> None:
    """Forget resolved launch configs (tuning.clear_cache calls this after a table changes)."""
    _decode_plan.cache_clear()
    _reduce_plan.cache_clear()
    _prefill_plan_at.cache_clear()


def num_decode_splits(max_kv: int, n_groups: int, plan: dict, num_cus: int) -> int:
    """The decode grid's split count S from host ints only (see the module docstring)."""
    want = -(-plan["splits_per_cu"] * num_cus // max(1, n_groups))
    return max(1, min(-(-max(1, max_kv) // plan["min_part"]), want, plan["max_splits"]))


_SEMAPHORES: dict = {}   # (device type, index) -> the current counter buffer
_SEM_KEEP: list = []     # every counter buffer ever handed out (captured graphs still use them)


def _semaphores(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 buffer of >= n arrival counters on `device`, reused across launches (the
    fused decode leaves it zeroed). Grown, never freed: a CUDA graph captured with an older
    buffer keeps writing to it."""
    key = (device.type, device.index)
    buf = _SEMAPHORES.get(key)
    if buf is None or buf.numel() < n:
        size = max(4096, _pow2(n), 0 if buf is None else 2 * buf.numel())
        buf = torch.zeros(size, dtype=torch.int32, device=device)
        _SEM_KEEP.append(buf)
        _SEMAPHORES[key] = buf
    return buf


# ----------------------------------------------------------------------------------------------
# launcher


def _check_int_tensor(name: str, x, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor, got {type(x).__name__}")
    if x.dtype != torch.int32:
        raise ValueError(f"{name}: expected int32, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {tuple(x.shape)}")


def _validate(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads,
              num_kv_heads, out, decode: bool) -> None:
    """Every check on the tensor arguments (shapes, strides, dtypes, devices); ValueError naming
    the argument. Its result depends only on what `_meta` reads, so passes are cached."""
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a torch tensor, got {type(x).__name__}")
        if x.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype must be float16, bfloat16 or float32, got {x.dtype}")
    if q.dim() != 2:
        raise ValueError(f"q: expected [T, H*Dh], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError(f"k_cache/v_cache: expected [NB, BS, Hkv, Dh], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"k_cache/v_cache: dtypes {k_cache.dtype}/{v_cache.dtype} differ from "
                         f"q's {q.dtype} (the KV cache holds activations' dtype)")
    if num_kv_heads < 1 or num_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads: {num_heads} must be a positive multiple of num_kv_heads "
                         f"({num_kv_heads})")
    nb, bs, hkv, dk = k_cache.shape
    if tuple(v_cache.shape[:3]) != (nb, bs, hkv):
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} does not match k_cache "
                         f"{tuple(k_cache.shape)} in blocks, block size or heads")
    dv = v_cache.shape[3]
    if hkv != num_kv_heads:
        raise ValueError(f"k_cache: has {hkv} KV heads, num_kv_heads is {num_kv_heads}")
    if q.shape[1] != num_heads * dk:
        raise ValueError(f"q: expected {num_heads} heads x {dk} = {num_heads * dk} features, got "
                         f"{q.shape[1]}")
    if q.stride(1) != 1 and q.shape[1] > 1:
        raise ValueError("q: the feature dim must be contiguous (stride 1)")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if x.stride(3) != 1 and x.shape[3] > 1:
            raise ValueError(f"{name}: the head dim must be contiguous (stride 1)")
    _check_int_tensor("query_start_loc", query_start_loc, 1)
    _check_int_tensor("seq_lens", seq_lens, 1)
    _check_int_tensor("block_tables", block_tables, 2)
    nseq = seq_lens.shape[0]
    if query_start_loc.shape[0] != nseq + 1:
        raise ValueError(f"query_start_loc: expected [{nseq + 1}] (B+1), got "
                         f"{tuple(query_start_loc.shape)}")
    if block_tables.shape[0] != nseq:
        raise ValueError(f"block_tables: expected {nseq} rows (B), got {block_tables.shape[0]}")
    if block_tables.stride(1) != 1 and block_tables.shape[1] > 1:
        raise ValueError("block_tables: rows must be contiguous (stride 1)")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache),
                    ("query_start_loc", query_start_loc), ("seq_lens", seq_lens),
                    ("block_tables", block_tables)):
        if x.device != q.device:
            raise ValueError(f"{name}: on {x.device}, q is on {q.device}")
    T = q.shape[0]
    if out is not None:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (T, num_heads * dv):
            raise ValueError(f"out: expected shape {(T, num_heads * dv)}, got "
                             f"{tuple(getattr(out, 'shape', ()))}")
        if out.dtype != q.dtype or out.device != q.device:
            raise ValueError(f"out: expected {q.dtype} on {q.device}, got {out.dtype} on "
                             f"{out.device}")
        if out.stride(1) != 1 and out.shape[1] > 1:
            raise ValueError("out: the feature dim must be contiguous (stride 1)")
    if decode and T > nseq:
        raise ValueError(f"max_query_len: is 1 but q has {T} rows for {nseq} sequences")


def _meta(x) -> tuple:
    return (x.dtype, x.shape, x.stride(), x.device)


_VALIDATED: set = set()  # argument signatures that passed _validate


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
              num_heads: int, num_kv_heads: int, scale: float, sliding_window: int | None = None,
              softcap: float | None = None, max_query_len: int | None = None,
              max_seq_len: int | None = None, out: torch.Tensor | None = None, *,
              partition_size: int | None = None, xq: tuple[int, int] | None = None,
              rope: "rope_mod.Fused | None" = None,
              fresh: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Paged causal attention with GQA. q [T, H*Dk] -> out [T, H*Dv] (q's dtype).

    k_cache [NB, BS, Hkv, Dk], v_cache [NB, BS, Hkv, Dv]; query_start_loc [B+1], seq_lens [B],
    block_tables [B, W] int32 on q's device. sliding_window None/0 = off, softcap None/0 = off.
    max_query_len / max_seq_len: host ints (ForwardBatch's). max_query_len == 1 selects the
    decode kernel (at most one query per sequence; sequences with none are skipped); otherwise, or
    when unknown, the varlen prefill kernel runs, which serves any mix. max_seq_len bounds the
    decode split grid (the block-table capacity W * BS when not given); any value is correct,
    each sequence splits its own length on the device. No host sync.
    partition_size (keyword only, for tests and tuning): decode splits of exactly this many keys
    (fewer, longer ones past MAX_SPLITS of them).
    xq = (V, E) (keyword only): at decode with out in the GEMV's range (xquant.MAX_ROWS rows) and
    heads of whole chunks, also quantize out for the GEMV's X_PRE path and record it
    (xquant.remember), as norm.rms_norm does.
    rope (keyword only; `rope.fused_args`): q and this step's k / v are not rotated or cached
    yet; the result is that of rope.rope(...) followed by attention. At decode the kernel does it
    (see "Rope fused into decode"); otherwise (prefill, a decode config that keeps q out of
    registers, or fewer sequences than the config's ROPE_MIN_B) the rope kernel runs first.
    fresh = (k, v) (keyword only, prefill): this step's K [T, Hkv*Dk] and V [T, Hkv*Dv] rows,
    rotated, as the cache holds them at the step's slots (row stride free, features contiguous).
    Sequences with no cached context then read their keys from these rows with tensor-memory
    copies (Hopper and later; `fresh_supported`), not from the paged cache. Ignored where not
    supported; the result is the same either way.
    """
    # ---- validate (cached by the tensors' dtype/shape/strides/device) ------------------------
    num_heads, num_kv_heads = int(num_heads), int(num_kv_heads)
    decode = max_query_len is not None and int(max_query_len) == 1
    try:
        key = (_meta(q), _meta(k_cache), _meta(v_cache), _meta(query_start_loc),
               _meta(seq_lens), _meta(block_tables), None if out is None else _meta(out),
               num_heads, num_kv_heads, decode)
    except (AttributeError, TypeError):  # not tensors: _validate says which
        key = None
    if key is None or key not in _VALIDATED:
        _validate(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads,
                  num_kv_heads, out, decode)
        if key is not None:
            if len(_VALIDATED) > 4096:
                _VALIDATED.clear()
            _VALIDATED.add(key)
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale: must be finite and >= 0, got {scale}")
    window = 0 if sliding_window is None else int(sliding_window)
    if window < 0:
        raise ValueError(f"sliding_window: must be None, 0 (off) or positive, got {sliding_window}")
    cap = 0.0 if softcap is None else float(softcap)
    if cap < 0 or not math.isfinite(cap):
        raise ValueError(f"softcap: must be None, 0 (off) or positive, got {softcap}")
    if partition_size is not None and int(partition_size) < 1:
        raise ValueError(f"partition_size: must be >= 1, got {partition_size}")

    nb, bs, hkv, dk = k_cache.shape
    dv = v_cache.shape[3]
    T = q.shape[0]
    nseq = seq_lens.shape[0]
    info = _device_info() if q.is_cuda else None
    kind = _kind(info)
    elem = q.element_size()
    G = num_heads // num_kv_heads
    if decode:
        plan = _decode_plan(kind, dk, dv, G, elem)
    else:
        max_kv = int(max_seq_len) if max_seq_len is not None else block_tables.shape[1] * bs
        plan = _prefill_plan(kind, dk, dv, G, elem, info.lds_bytes if info else 0, T,
                             prefill_keys(max_kv, window))
    # whether the prefill kernel can take this step's K / V rows here (`fresh`, or the rope's)
    fits = not decode and (rope is not None or fresh is not None) \
        and _fresh_fits(q, k_cache, v_cache, plan, info)
    if rope is not None:
        if not (decode and plan["ROPE_OK"] and nseq >= plan["rope_min_b"]):
            k_out = None
            if fits and fresh is None:
                # the rope kernel also writes the rotated k rows: whole prompts read them
                k_out = torch.empty((T, hkv * dk), dtype=q.dtype, device=q.device)
                fresh = (k_out, rope.v)
            q = rope_mod.apply(q, rope, k_cache, v_cache, num_heads, num_kv_heads, dk, k_out)
            rope = None
    if out is None:
        out = torch.empty((T, num_heads * dv), dtype=q.dtype, device=q.device)
    if T == 0 or nseq == 0:
        return out

    # ---- shared arguments ----------------------------------------------------------------------
    softcap_on = cap > 0
    if softcap_on:
        qk_scale, cap_scale = 2.0 * LOG2E * scale / cap, cap * LOG2E
    else:
        qk_scale, cap_scale = scale * LOG2E, 1.0
    ks, vs = k_cache.stride(), v_cache.stride()
    common = dict(STRIDE_KB=ks[0], STRIDE_KS=ks[1], STRIDE_KH=ks[2], STRIDE_VB=vs[0],
                  STRIDE_VS=vs[1], STRIDE_VH=vs[2], SOFTCAP=softcap_on, WINDOW=window > 0,
                  DOT_F32=_INTERPRET and k_cache.dtype == torch.bfloat16)

    if decode:
        # ---- decode ---------------------------------------------------------------------------
        ng = num_kv_heads * plan["NHC"]
        max_kv = int(max_seq_len) if max_seq_len is not None else block_tables.shape[1] * bs
        if partition_size is not None:
            min_part, align = int(partition_size), 1
            S = max(1, min(-(-max(1, max_kv) // min_part), MAX_SPLITS))
        else:
            min_part, align = plan["min_part"], plan["BLOCK_N"]
            S = num_decode_splits(max_kv, nseq * ng, plan, info.num_cus if info else _NO_GPU_CUS)
        split = S > 1
        fused = split and plan["fused"]
        if split:
            part = torch.empty(nseq * ng * S * plan["BLOCK_HT"] * (dv + 2), dtype=torch.float32,
                               device=q.device)
        else:
            part = out  # unused
        sem = _semaphores(q.device, nseq * ng) if fused else seq_lens  # unused unless fused
        whole = dv == plan["BLOCK_DV"] and out.is_contiguous()
        xo = xquant.producer_args(out, xq if whole else None, dv)
        pk = pdl.launch_args()  # one decision for both kernels
        if rope is not None:
            rp = (rope.k, rope.v, rope.positions, rope.slot_mapping, rope.inv)
            rs = (rope.k.stride(0), rope.v.stride(0), rope.num_slots)
            rc = dict(ROPE=True, ROT=rope.rot, NEOX=rope.neox)
        else:
            rp, rs, rc = (q, q, seq_lens, seq_lens, seq_lens), (0, 0, 0), {}   # (unused)
        _attn_decode_kernel[(nseq, ng, S)](
            q, k_cache, v_cache, out, part, sem, query_start_loc, seq_lens, block_tables, *xo.ptrs,
            *rp, S, min_part, align, q.stride(0), out.stride(0), block_tables.stride(0),
            *xo.row_args, *rs, qk_scale, cap_scale, window,
            G=G, HT=plan["HT"], NHC=plan["NHC"], Dk=dk, Dv=dv, BLOCK_G=plan["BLOCK_G"],
            BLOCK_HT=plan["BLOCK_HT"], BLOCK_N=plan["BLOCK_N"], BLOCK_DK=plan["BLOCK_DK"],
            BLOCK_DV=plan["BLOCK_DV"], BLOCK_SIZE=bs, SPLIT=split, FUSED_REDUCE=fused,
            SPLIT_CHUNK=plan["SPLIT_CHUNK"], QK_CHUNK=plan["QK_CHUNK"], V_EARLY=plan["V_EARLY"],
            **xo.consts, **rc, **common, **plan["opts"], **pk)
        if split and not fused:
            rplan = _reduce_plan(kind, dv, plan["HT"], S)
            _attn_reduce_kernel[(nseq, ng)](
                out, part, query_start_loc, seq_lens, *xo.ptrs, S, min_part, align,
                out.stride(0), window, *xo.row_args,
                G=G, HT=plan["HT"], NHC=plan["NHC"], Dv=dv, BLOCK_HT=plan["BLOCK_HT"],
                BLOCK_DV=plan["BLOCK_DV"], BLOCK_N=plan["BLOCK_N"], WINDOW=window > 0,
                SPLIT_CHUNK=rplan["SPLIT_CHUNK"], **xo.consts, **rplan["opts"], **pk)
        xo.record(out)
        return out

    # ---- prefill / mixed -------------------------------------------------------------------------
    grid = (T // plan["BQ"] + nseq, num_kv_heads * plan["NHC"])
    if window:  # a tile attends at most its BQ tokens' windows, from a BLOCK_N-aligned start
        max_kv = min(max_kv, window + plan["BQ"] + plan["BLOCK_N"])
    S = num_prefill_splits(grid[0] * grid[1], max_kv, plan, info.num_cus if info else _NO_GPU_CUS)
    if S > 1:
        part = torch.empty(grid[0] * grid[1] * S * plan["BLOCK_M"] * (dv + 2),
                           dtype=torch.float32, device=q.device)
        sem = _semaphores(q.device, grid[0] * grid[1])
    else:
        part, sem = out, seq_lens  # unused
    descs = _fresh_descs(fresh, q, k_cache, v_cache, plan, fits) if fresh is not None else None
    fr = dict(k_desc=descs[0], v_desc=descs[1], FRESH=True,
              BLOCK_N_FRESH=plan["BLOCK_N_FRESH"]) if descs else {}
    _attn_prefill_kernel[grid + (S,)](
        q, k_cache, v_cache, out, part, sem, query_start_loc, seq_lens, block_tables, nseq,
        S, plan["min_tiles"],
        q.stride(0), out.stride(0), block_tables.stride(0), qk_scale, cap_scale, window,
        G=G, HT=plan["HT"], NHC=plan["NHC"], BQ=plan["BQ"], Dk=dk, Dv=dv,
        BLOCK_M=plan["BLOCK_M"], BLOCK_N=plan["BLOCK_N"], BLOCK_DK=plan["BLOCK_DK"],
        BLOCK_DV=plan["BLOCK_DV"], BLOCK_SIZE=bs, BLOCK_B=64, SINGLE_LOOP=plan["SINGLE_LOOP"],
        QK_CHUNK=plan["QK_CHUNK"], IDX64=_span(k_cache) >= 2**31 or _span(v_cache) >= 2**31,
        SPLIT=S > 1, **fr, **common, **plan["opts"])
    return out


def fresh_supported(info=None) -> bool:
    """Whether `attention(..., fresh=...)` can read this step's K / V rows by tensor-memory
    copies here: NVIDIA sm90 and later, or the interpreter (for the tests). FORGE_ATTN_FRESH=0
    turns it off."""
    if TensorDescriptor is None or os.environ.get("FORGE_ATTN_FRESH", "1").strip() == "0":
        return False
    if _INTERPRET:
        return True
    if info is None:
        return False
    arch = info.arch
    return info.vendor == "nvidia" and arch.startswith("sm") and arch[2:].isdigit() \
        and int(arch[2:]) >= 90


def _fresh_fits(q, k_cache, v_cache, plan: dict, info) -> bool:
    """Whether the prefill kernel can take fresh K / V rows here (before their tensors are
    known): a supported device, a tile config that neither chunks nor pads the head dims, and
    q's dtype in both caches."""
    dk, dv = k_cache.shape[3], v_cache.shape[3]
    return (fresh_supported(info)
            and plan["QK_CHUNK"] == dk == plan["BLOCK_DK"] and plan["BLOCK_DV"] == dv
            and k_cache.dtype == q.dtype and v_cache.dtype == q.dtype)


def _fresh_descs(fresh, q, k_cache, v_cache, plan: dict, fits: bool):
    """Tensor descriptors of `fresh`'s K / V rows for the prefill kernel, or None where that
    path does not apply (not `fits`: `_fresh_fits`; or rows whose alignment the copies cannot
    take): the kernel then reads the cache. Rows of the wrong shape, dtype or device are an
    error."""
    k, v = fresh
    T = q.shape[0]
    dk, dv = k_cache.shape[3], v_cache.shape[3]
    hkv = k_cache.shape[2]
    for x, d in ((k, dk), (v, dv)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or tuple(x.shape) != (T, hkv * d) \
                or x.dtype != q.dtype or x.device != q.device or x.stride(1) != 1:
            raise ValueError(f"fresh: expected two {q.dtype} [T={T}, Hkv*D] row tensors on "
                             f"{q.device} with contiguous features, got "
                             f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if not fits:
        return None
    for x in (k, v):
        if x.data_ptr() % 16 or (x.stride(0) * x.element_size()) % 16:
            return None
    bn = plan["BLOCK_N_FRESH"]
    return (TensorDescriptor(k, [T, hkv * dk], [k.stride(0), 1], [bn, dk]),
            TensorDescriptor(v, [T, hkv * dv], [v.stride(0), 1], [bn, dv]))


def _span(x: torch.Tensor) -> int:
    """Elements from x's first to one past its last (the largest offset a kernel forms)."""
    return 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride())) if x.numel() else 0


# ----------------------------------------------------------------------------------------------
# compile specs (tests/kernels/test_amd_compile.py builds each for gfx942, gfx1100 and sm90)


def _sig(fn, types: dict, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = types.get(name, "i32")
    return sig


def _attrs(fn, sig: dict) -> dict:
    """Divisibility hints as the JIT gives them: pointers and the activation row strides."""
    return divisibility_attrs(fn, sig, ("stride_qt", "stride_ot"))


def _derive_prefill(ce: dict) -> None:
    """Constexprs the launcher derives from its config keys (for autotune.report's table
    entries, whose keys arrive raw): HT / NHC / BQ from BLOCK_M and HT (0: the whole group),
    QK_CHUNK 0 -> BLOCK_DK."""
    ce.update(_tile_rows(ce["G"], ce["BLOCK_M"], ce.get("HT", 0)),
              QK_CHUNK=_qk_chunk(ce, ce["BLOCK_DK"]))


def _fresh_signature(sig: dict, ce: dict) -> dict:
    """A FRESH prefill spec's signature at constexprs ce: the descriptors' boxes are
    [BLOCK_N, head dim] of the cache's element type, as `_fresh_descs` builds them."""
    ty = sig["k_cache_ptr"].lstrip("*")
    bn = ce.get("BLOCK_N_FRESH") or ce["BLOCK_N"]
    return dict(sig, k_desc=f"tensordesc<{ty}[{bn}, {ce['BLOCK_DK']}]>",
                v_desc=f"tensordesc<{ty}[{bn}, {ce['BLOCK_DV']}]>")


def _cache_strides(d: int, hkv: int = 8, bs: int = 16) -> dict:
    """Constexpr strides of contiguous [NB, bs, hkv, d] K and V caches."""
    return dict(STRIDE_KB=bs * hkv * d, STRIDE_KS=hkv * d, STRIDE_KH=d,
                STRIDE_VB=bs * hkv * d, STRIDE_VS=hkv * d, STRIDE_VH=d)


def compile_specs(kind: str = "rdna", dtypes: tuple = ("fp16", "bf16", "fp32"),
                  suffix: str = "", vendors: tuple | None = None) -> list[dict]:
    """Every kernel x head dim (64, 128, 256) x dtype (of `dtypes`) with `kind`'s default
    tiles ("nvidia", "cdna", "rdna") and the constexpr flags (softcap, window, split, fused
    merge) varied across specs. Shape: Llama-like GQA 32:8, cache block size 16. Each spec also
    carries "attrs" (divisibility hints, for ASTSource) as the JIT would specialise them,
    "kernel" and "bucket" (the tuning-table name and bucket the launcher asks for: fp32 has its
    own names, attn_prefill_f32 / attn_decode_f32, since FMA dots want other tiles than MMA
    ones) and, for prefill, "derive" (constexprs that follow from BLOCK_M). Names get `suffix`;
    with `vendors` the specs say they launch only there (autotune.report skips other targets)."""
    specs = []
    flags = [(False, False), (True, False), (False, True)]
    for di, d in enumerate((64, 128, 256)):
        for ti, dt in enumerate(("fp16", "bf16", "fp32")):
            if dt not in dtypes:
                continue
            elem = 4 if dt == "fp32" else 2
            softcap_on, window_on = flags[(di + ti) % 3]
            ptr = "*" + dt
            G = 4
            f32 = "_f32" if elem == 4 else ""
            b = tuning.bucket(d=d, g=G)
            strides = _cache_strides(d)
            # prefill
            cfg = _prefill_default(kind, d, elem)
            ce = dict(G=G, **_tile_rows(G, cfg["BLOCK_M"], cfg["HT"]), Dk=d, Dv=d,
                      BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_DK=d, BLOCK_DV=d,
                      BLOCK_SIZE=16, BLOCK_B=64, **strides, SOFTCAP=softcap_on, WINDOW=window_on,
                      DOT_F32=False, SINGLE_LOOP=bool(cfg["SINGLE_LOOP"]),
                      QK_CHUNK=_qk_chunk(cfg, d), IDX64=di % 2 == 1,
                      # split keys with the merge epilogue: NVIDIA bf16 (the production
                      # launch, whose registers it bounds), varied elsewhere
                      SPLIT=(dt == "bf16") if kind == "nvidia" else (di + ti) % 2 == 1,
                      k_desc=None, v_desc=None, FRESH=False, BLOCK_N_FRESH=0)
            types = {"q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                     "part_ptr": "*fp32", "sem_ptr": "*i32",
                     "qsl_ptr": "*i32", "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32",
                     "qk_scale": "fp32", "cap_scale": "fp32"}
            sig = _sig(_attn_prefill_kernel, types, ce)
            specs.append({"name": f"attn_prefill_d{d}_{dt}{suffix}", "fn": _attn_prefill_kernel,
                          # a 2048-token call (after 4096 keys; under a window, 512 keys):
                          # report compiles each table entry of another bucket against its
                          # nearest spec
                          "kernel": "attn_prefill" + f32,
                          "bucket": tuning.bucket(d=d, g=G, kv=512 if window_on else 8192, t=2048),
                          "derive": _derive_prefill, "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_prefill_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
                          "options": {k: cfg[k] for k in tuning.AMD_ONLY_KEYS if k in cfg}})
            plain = specs[-1]
            if kind == "nvidia" and dt == "bf16":
                # a whole prompt's keys from this step's rows (`fresh=`): tensor descriptors
                # whose boxes follow the entry's BLOCK_N (`_fresh_signature`)
                fce = {k: v for k, v in ce.items() if k not in ("k_desc", "v_desc")}
                fce["FRESH"] = True
                specs.append(dict(plain, name=f"attn_prefill_d{d}_{dt}_fresh{suffix}",
                                  constexprs=fce, signature=_fresh_signature(sig, fce),
                                  signature_for=_fresh_signature))
            if kind == "nvidia" and dt == "bf16" and d == 256 and not window_on:
                # Gemma 3's local layers: the window with split keys (its production launch)
                specs.append(dict(plain, name=f"attn_prefill_d{d}_{dt}_window{suffix}",
                                  constexprs=dict(ce, WINDOW=True),
                                  bucket=tuning.bucket(d=d, g=G, kv=512, t=2048)))
            # decode (split and fused merge on some specs, plain on others)
            cfg = _decode_default(kind, d, elem)
            # NVIDIA: always split with the launcher's fused merge (sm90 d128's table entry
            # turns it off: that launch is compiled from the entry); elsewhere varied
            split = (di + ti) % 2 == 0 or kind == "nvidia"
            fused = split and bool(cfg["FUSED_REDUCE"]) and (ti != 1 or kind == "nvidia")
            ce = dict(G=G, HT=G, NHC=1, Dk=d, Dv=d, BLOCK_G=16, BLOCK_HT=G,
                      BLOCK_N=cfg["BLOCK_N"], BLOCK_DK=d, BLOCK_DV=d, BLOCK_SIZE=16, **strides,
                      SOFTCAP=softcap_on, WINDOW=window_on, SPLIT=split, FUSED_REDUCE=fused,
                      SPLIT_CHUNK=_split_chunk(cfg["SPLIT_CHUNK"], G, d, cfg["num_warps"]),
                      DOT_F32=False, QK_CHUNK=_qk_chunk(cfg, d),
                      V_EARLY=bool(cfg["V_EARLY"]) and _qk_chunk(cfg, d) == d, PDL=False,
                      XQ_V=0, XQ_E=0, ROPE=False, ROT=0, NEOX=False)
            # rope fused in (the production decode on NVIDIA; varied elsewhere), where q stays
            # in registers; partial rotary at d = 256 (gemma-like heads rotate them whole, but
            # the pass-through lanes are the case to compile)
            if _qk_chunk(cfg, d) == d and (kind == "nvidia" or (di + ti) % 2 == 1):
                ce.update(ROPE=True, ROT=d // 2 if d == 256 else d, NEOX=di % 2 == 1)
            # NVIDIA bf16 decode quantizes its output for the o projection's X_PRE GEMV
            if kind == "nvidia" and dt == "bf16":
                ce.update(XQ_V=4, XQ_E=8)
            types = {"q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                     "part_ptr": "*fp32", "sem_ptr": "*i32", "qsl_ptr": "*i32",
                     "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32",
                     "xq_ptr": "*u8", "xs_ptr": "*fp32", "kn_ptr": ptr, "vn_ptr": ptr,
                     "pos_ptr": "*i32", "slot_ptr": "*i64", "inv_ptr": "*fp32",
                     "qk_scale": "fp32", "cap_scale": "fp32"}
            sig = _sig(_attn_decode_kernel, types, ce)
            specs.append({"name": f"attn_decode_d{d}_{dt}{suffix}", "fn": _attn_decode_kernel,
                          "kernel": "attn_decode" + f32, "bucket": b,
                          "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_decode_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
            # reduce (when the merge is not fused)
            cfg = _reduce_default(kind)
            ce = dict(G=G, HT=G, NHC=1, Dv=d, BLOCK_HT=G, BLOCK_DV=d, BLOCK_N=32,
                      WINDOW=window_on,
                      SPLIT_CHUNK=_split_chunk(cfg["SPLIT_CHUNK"], G, d, cfg["num_warps"]),
                      PDL=False, XQ_V=0, XQ_E=0)
            if kind == "nvidia" and dt == "bf16":  # it stores the output when the merge is not
                ce.update(XQ_V=4, XQ_E=8)          # fused, quantized for X_PRE as decode's is
            types = {"out_ptr": ptr, "part_ptr": "*fp32", "qsl_ptr": "*i32",
                     "seq_lens_ptr": "*i32", "xq_ptr": "*u8", "xs_ptr": "*fp32"}
            sig = _sig(_attn_reduce_kernel, types, ce)
            specs.append({"name": f"attn_reduce_d{d}_{dt}{suffix}", "fn": _attn_reduce_kernel,
                          "kernel": "attn_reduce", "bucket": tuning.bucket(d=d, s=64),
                          "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_reduce_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    if vendors:
        for sp in specs:
            sp["vendors"] = list(vendors)
    return specs


# The RDNA3 tiles are the smallest (and compile quickly for every target); the NVIDIA launcher
# defaults (wgmma tiles, 3 stages, the fused split merge; tables override them per bucket, e.g.
# sm90 d128 decode: 4 stages, separate merge, compiled from that entry) are compiled for NVIDIA
# targets only, in bf16 and fp32 (fp16 compiles like bf16). The NVIDIA reduce specs are what
# launches where a table entry turns the fused merge off (sm90 d128_g4), bf16 with the output's
# X_PRE quantization. compile_specs("cdna") gives CDNA's.
COMPILE_SPECS: list[dict] = compile_specs("rdna") + compile_specs(
    "nvidia", dtypes=("bf16", "fp32"), suffix="_nv", vendors=("nvidia",))
# decode and its merge as Hopper launches them (PDL), at the Llama heads
COMPILE_SPECS += [pdl.with_pdl(s) for s in COMPILE_SPECS
                  if s["name"] in ("attn_decode_d128_bf16_nv", "attn_reduce_d128_bf16_nv")]
