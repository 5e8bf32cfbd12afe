"""Paged causal attention in Triton: GQA, sliding window, logit softcap, varlen prefill and decode.

Meaning (the same as forge/cpu/attention.py and `Backend.attention` in runtime/backend.py):
sequence b owns query rows [qsl[b], qsl[b+1]) of q; they are its last q_len tokens, so query i
sits at position p = seq_lens[b] - q_len + i and attends the cached keys j (found through
block_tables[b]) with j <= p and, with a sliding window W, p - j < W. Scores are q.k * scale,
then softcap * tanh(s / softcap), then an fp32 online softmax, then @ V. Query head h reads KV
head h // (H // Hkv). The K/V of this step's tokens are already in the cache, so chunked prefill,
plain prefill and decode are one piece of math.

Kernels:
- `_attn_prefill_kernel`: flash attention over the paged cache, varlen. A program owns a tile of
  BLOCK_M rows = BQ consecutive query tokens x HT query heads of one KV group (all heads of the
  group when they fit), so every K/V tile it loads serves all heads of the group. Program ids map
  to (sequence, query tile) on the device (no host sync): sequence b's tiles start at
  qsl[b] // BQ + b, so the grid is T // BQ + B tiles. The KV loop runs from the window's first
  tile to the diagonal; only the edge tiles pay for masks (SINGLE_LOOP=False), or one masked
  loop body does it all (SINGLE_LOOP=True: fewer live registers, the AMD default).
- `_attn_decode_kernel`: one query per sequence; one program per (sequence, KV head, split)
  handles the whole GQA group. Long contexts are split (flash-decoding): each split writes its
  partial (max, sum, acc) and `_attn_reduce_kernel` combines them. The split count comes from
  host ints only (max_seq_len, the number of sequences and of CUs), never from device tensors.

Scores are kept in log2 units (scale * log2(e) folded in) so the softmax uses exp2. Cache block
ids are widened to int64 before they multiply a stride: a cache may hold more than 2^31 elements.
Masked-off keys are never read (their loads are masked), so stale or NaN cache slots past a
sequence's end and the null block 0 cannot leak into the output.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from forge.kernels import tuning

LOG2E = 1.4426950408889634
MAX_SPLITS = 256          # cap on decode partitions per sequence (the reduce's BLOCK_S)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
def _qk(q, q_ok, k_rows, kmask, in_kv, Dk: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, QK_CHUNK: tl.constexpr,
        MASK_ROWS: tl.constexpr, DOT_F32: tl.constexpr):
    """Q K^T for one KV tile, [BLOCK_M, BLOCK_N] fp32. k_rows: [BLOCK_N] pointers to the key
    rows. With QK_CHUNK == BLOCK_DK, q is the Q tile held in registers; with a smaller
    QK_CHUNK (for FMA dots, fp32 on RDNA3, which keep a whole K-row per thread), q holds the
    [BLOCK_M] row pointers and the head dim is reduced in chunks reloaded from cache, in a
    loop that is kept rolled (unrolled, the compiler schedules every chunk's loads at once and
    the registers are gone again: gfx1100 fp32 d256 spilled ~240 VGPRs, rolled it needs ~128)."""
    if QK_CHUNK == BLOCK_DK:
        k = tl.load(k_rows[:, None] + tl.arange(0, BLOCK_DK)[None, :], mask=kmask, other=0.0)
        return _dot(q, tl.trans(k), DOT_F32)
    else:
        qk = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for c in tl.range(0, BLOCK_DK // QK_CHUNK, loop_unroll_factor=1):
            offs_c = c * QK_CHUNK + tl.arange(0, QK_CHUNK)
            qc = tl.load(q[:, None] + offs_c[None, :],
                         mask=q_ok[:, None] & (offs_c[None, :] < Dk), other=0.0)
            if MASK_ROWS:
                kcm = in_kv[:, None] & (offs_c[None, :] < Dk)
            else:
                kcm = offs_c[None, :] < Dk
            kc = tl.load(k_rows[:, None] + offs_c[None, :], mask=kcm, other=0.0)
            qk += _dot(qc, tl.trans(kc), DOT_F32)
        return qk


@triton.jit
def _prefill_tile(
    acc, l_i, m_i, q, q_ok, start, hi, pos0,
    k_cache_ptr,  # [NB, BS, Hkv, Dk]
    v_cache_ptr,  # [NB, BS, Hkv, Dv]
    bt_ptr,       # [W] this sequence's block-table row
    k_head_off, v_head_off,
    stride_kb, stride_ks, stride_vb, stride_vs,
    qk_scale, cap_scale, window,
    HT: tl.constexpr, Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, QK_CHUNK: tl.constexpr,
    MASKED: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Online-softmax update with the keys [start, start + BLOCK_N) (those < hi). MASKED=False
    only for tiles every row of the query tile may fully see. Row r of the tile is query
    position pos0 + r // HT. q: the Q tile, or (QK_CHUNK < BLOCK_DK) its row pointers, with
    q_ok the valid rows."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if MASKED:
        in_kv = offs_n < hi
        kmask = in_kv[:, None] & (offs_dk[None, :] < Dk)
        vmask = in_kv[:, None] & (offs_dv[None, :] < Dv)
    else:
        kmask = offs_dk[None, :] < Dk
        vmask = offs_dv[None, :] < Dv
    if BLOCK_SIZE % BLOCK_N == 0:
        # The tile (start is a multiple of BLOCK_N) lies in one cache block: one id, no gather.
        blk = tl.load(bt_ptr + start // BLOCK_SIZE).to(tl.int64)
    elif MASKED:
        blk = tl.load(bt_ptr + offs_n // BLOCK_SIZE, mask=in_kv, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_ptr + offs_n // BLOCK_SIZE).to(tl.int64)
    slot = (offs_n % BLOCK_SIZE).to(tl.int64)
    k_rows = k_cache_ptr + (blk * stride_kb + slot * stride_ks + k_head_off)
    if MASKED:
        qk = _qk(q, q_ok, k_rows, kmask, in_kv, Dk, BLOCK_M, BLOCK_N, BLOCK_DK, QK_CHUNK, True,
                 DOT_F32)
    else:
        qk = _qk(q, q_ok, k_rows, kmask, kmask, Dk, BLOCK_M, BLOCK_N, BLOCK_DK, QK_CHUNK, False,
                 DOT_F32)
    s = _scores(qk, qk_scale, cap_scale, SOFTCAP)
    if MASKED:
        pos = pos0 + tl.arange(0, BLOCK_M) // HT
        valid = (offs_n[None, :] <= pos[:, None]) & in_kv[None, :]
        if WINDOW:
            valid = valid & (pos[:, None] - offs_n[None, :] < window)
        s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + (blk * stride_vb + slot * stride_vs + v_head_off)[:, None]
                + offs_dv[None, :], mask=vmask, other=0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32)
    return acc, l_i, m_new


@triton.jit
def _attn_prefill_kernel(
    q_ptr,             # [T, H*Dk]   row stride stride_qt
    k_cache_ptr,       # [NB, BS, Hkv, Dk]
    v_cache_ptr,       # [NB, BS, Hkv, Dv]
    out_ptr,           # [T, H*Dv]   row stride stride_ot
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    block_tables_ptr,  # [B, W] i32  row stride stride_bt
    num_seqs,
    stride_qt, stride_ot, stride_bt,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
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
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, DOT_F32: tl.constexpr,
    SINGLE_LOOP: tl.constexpr,  # one masked loop over all keys (fewer registers: AMD)
    QK_CHUNK: tl.constexpr,     # head-dim chunk of Q K^T (BLOCK_DK: Q stays in registers)
):
    pid_q = tl.program_id(0)
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
    offs_dk = tl.arange(0, BLOCK_DK)
    tok = offs_m // HT
    hg = hc * HT + offs_m % HT  # head within the KV group
    row_ok = (tok < BQ) & (q0 + tok < q_len) & (hg < G)
    q_rows = q_ptr + ((q_start + q0 + tok).to(tl.int64) * stride_qt + (kvh * G + hg) * Dk)
    if QK_CHUNK == BLOCK_DK:
        q = tl.load(q_rows[:, None] + offs_dk[None, :],
                    mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)
    else:
        q = q_rows

    # Keys [kv_lo, kv_end). Tiles in [b_end, c_end) need no mask for any row; the masked loop
    # covers the window's leading tiles [kv_lo, b_end) and the diagonal [c_end, kv_end).
    p_lo = ctx + q0
    p_hi = ctx + tl.minimum(q0 + BQ, q_len) - 1
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

    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head_off = kvh.to(tl.int64) * stride_kh
    v_head_off = kvh.to(tl.int64) * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    if SINGLE_LOOP:
        # One loop body: masks on every tile, but only one copy of the dot operands live (two
        # loops overflow RDNA3's 256 VGPRs even at 64x16 tiles).
        for start in range(kv_lo, kv_end, BLOCK_N):
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, kv_end, p_lo, k_cache_ptr, v_cache_ptr, bt_ptr,
                k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV,
                BLOCK_SIZE, QK_CHUNK, True, SOFTCAP, WINDOW, DOT_F32)
    else:
        for start in range(b_end, c_end, BLOCK_N):
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, c_end, p_lo, k_cache_ptr, v_cache_ptr, bt_ptr,
                k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV,
                BLOCK_SIZE, QK_CHUNK, False, SOFTCAP, WINDOW, DOT_F32)
        for i in range(0, n_masked):
            front = i < n_front
            start = tl.where(front, kv_lo + i * BLOCK_N, c_end + (i - n_front) * BLOCK_N)
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, row_ok, start, tl.where(front, b_end, kv_end), p_lo,
                k_cache_ptr, v_cache_ptr, bt_ptr, k_head_off, v_head_off, stride_kb, stride_ks,
                stride_vb, stride_vs, qk_scale, cap_scale, window, HT, Dk, Dv, BLOCK_M, BLOCK_N,
                BLOCK_DK, BLOCK_DV, BLOCK_SIZE, QK_CHUNK, True, SOFTCAP, WINDOW, DOT_F32)

    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_i[:, None]
    # Row indices again (cheap) rather than kept live through the loops.
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    tok = offs_m // HT
    hg = hc * HT + offs_m % HT
    row_ok = (tok < BQ) & (q0 + tok < q_len) & (hg < G)
    o_rows = (q_start + q0 + tok).to(tl.int64) * stride_ot + (kvh * G + hg) * Dv
    tl.store(out_ptr + o_rows[:, None] + offs_dv[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def _attn_decode_kernel(
    q_ptr,             # [T, H*Dk]   row stride stride_qt (T <= B: at most one query a sequence)
    k_cache_ptr,       # [NB, BS, Hkv, Dk]
    v_cache_ptr,       # [NB, BS, Hkv, Dv]
    out_ptr,           # [T, H*Dv]   row stride stride_ot (written when not SPLIT)
    part_ml_ptr,       # [B, H, S, 2] f32 (max in log2 units, sum) per split (when SPLIT)
    part_acc_ptr,      # [B, H, S, Dv] f32 unnormalised accumulators (when SPLIT)
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    block_tables_ptr,  # [B, W] i32  row stride stride_bt
    num_splits, partition,
    stride_qt, stride_ot, stride_bt,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    qk_scale, cap_scale, window,
    H: tl.constexpr, G: tl.constexpr, HT: tl.constexpr, NHC: tl.constexpr,
    Dk: tl.constexpr, Dv: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
    QK_CHUNK: tl.constexpr,  # head-dim chunk of Q K^T (BLOCK_DK: Q stays in registers)
):
    seq = tl.program_id(0)
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    kvh = pid_h // NHC
    hc = pid_h % NHC

    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_lo = split * partition
    if (q_len <= 0) | (kv_lo >= seq_len):
        return  # a padding sequence, or a split past this sequence's end (the reduce skips it)
    # The last split runs to the end, so a max_seq_len below a real length loses no keys.
    kv_hi = tl.where(split == num_splits - 1, seq_len, tl.minimum(kv_lo + partition, seq_len))
    if WINDOW:
        kv_lo = tl.maximum(kv_lo, seq_len - window)

    offs_g = tl.arange(0, BLOCK_G)
    hg = hc * HT + offs_g
    row_ok = (offs_g < HT) & (hg < G)
    head = kvh * G + hg
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    t_idx = q_start.to(tl.int64)
    q_rows = q_ptr + t_idx * stride_qt + head * Dk
    if QK_CHUNK == BLOCK_DK:
        q = tl.load(q_rows[:, None] + offs_dk[None, :],
                    mask=row_ok[:, None] & (offs_dk[None, :] < Dk), other=0.0)
    else:
        q = q_rows

    bt_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head_off = kvh.to(tl.int64) * stride_kh
    v_head_off = kvh.to(tl.int64) * stride_vh
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    m_i = tl.full([BLOCK_G], -1.0e30, dtype=tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N)
    # Tiles start at multiples of BLOCK_N (the keys before kv_lo are masked off).
    for start in range((kv_lo // BLOCK_N) * BLOCK_N, kv_hi, BLOCK_N):
        offs_n = start + offs_n0
        in_kv = (offs_n >= kv_lo) & (offs_n < kv_hi)
        if BLOCK_SIZE % BLOCK_N == 0:  # the tile lies in one cache block
            blk = tl.load(bt_ptr + start // BLOCK_SIZE).to(tl.int64)
        else:
            blk = tl.load(bt_ptr + offs_n // BLOCK_SIZE, mask=in_kv, other=0).to(tl.int64)
        slot = (offs_n % BLOCK_SIZE).to(tl.int64)
        qk = _qk(q, row_ok, k_cache_ptr + (blk * stride_kb + slot * stride_ks + k_head_off),
                 in_kv[:, None] & (offs_dk[None, :] < Dk), in_kv, Dk, BLOCK_G, BLOCK_N, BLOCK_DK,
                 QK_CHUNK, True, DOT_F32)
        s = _scores(qk, qk_scale, cap_scale, SOFTCAP)
        s = tl.where(in_kv[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + (blk * stride_vb + slot * stride_vs + v_head_off)[:, None]
                    + offs_dv[None, :], mask=in_kv[:, None] & (offs_dv[None, :] < Dv), other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32)
        m_i = m_new

    if SPLIT:
        row = (seq.to(tl.int64) * H + head) * num_splits + split  # [BLOCK_G]
        tl.store(part_ml_ptr + row * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=row_ok)
        tl.store(part_acc_ptr + (row * Dv)[:, None] + offs_dv[None, :], acc,
                 mask=row_ok[:, None] & (offs_dv[None, :] < Dv))
    else:
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_i[:, None]
        tl.store(out_ptr + t_idx * stride_ot + (head * Dv)[:, None] + offs_dv[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def _attn_reduce_kernel(
    out_ptr,           # [T, H*Dv]   row stride stride_ot
    part_ml_ptr,       # [B, H, S, 2] f32
    part_acc_ptr,      # [B, H, S, Dv] f32
    qsl_ptr,           # [B+1] i32
    seq_lens_ptr,      # [B] i32
    num_splits, partition, stride_ot,
    H: tl.constexpr, Dv: tl.constexpr,
    BLOCK_S: tl.constexpr, SPLIT_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    if q_len <= 0:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    n_valid = tl.minimum(tl.cdiv(seq_len, partition), num_splits)  # splits that wrote partials
    base = (seq.to(tl.int64) * H + head) * num_splits

    offs_s = tl.arange(0, BLOCK_S)
    ok = offs_s < n_valid
    m = tl.load(part_ml_ptr + (base + offs_s) * 2, mask=ok, other=-1.0e30)
    l = tl.load(part_ml_ptr + (base + offs_s) * 2 + 1, mask=ok, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.where(ok, tl.exp2(m - m_max), 0.0)
    total = tl.sum(w * l, 0)
    total = tl.where(total > 0.0, total, 1.0)

    offs_c = tl.arange(0, SPLIT_CHUNK)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    for s0 in range(0, n_valid, SPLIT_CHUNK):
        sc = s0 + offs_c
        okc = sc < n_valid
        mc = tl.load(part_ml_ptr + (base + sc) * 2, mask=okc, other=-1.0e30)
        wc = tl.where(okc, tl.exp2(mc - m_max), 0.0)
        a = tl.load(part_acc_ptr + ((base + sc) * Dv)[:, None] + offs_dv[None, :],
                    mask=okc[:, None] & (offs_dv[None, :] < Dv), other=0.0)
        acc += tl.sum(wc[:, None] * a, 0)
    o = acc / total
    tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + head * Dv + offs_dv,
             o.to(out_ptr.dtype.element_ty), mask=offs_dv < Dv)


# ----------------------------------------------------------------------------------------------
# launch configs


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


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

    nvidia: big tiles, multi-stage cp.async pipelining, the KV loop split into unmasked and
    masked parts. cdna: 64 KiB LDS, so one stage and narrower K/V tiles at head dim 256. rdna:
    WMMA keeps every K/V operand per wave in VGPRs (256 max): small tiles and one loop body
    (gfx1100 ISA: D=128 at 64x16 needs ~245 VGPRs; larger tiles or two loop bodies spill).
    SINGLE_LOOP (0/1): one masked loop instead of two. QK_CHUNK: 0 (Q K^T in one dot) or a
    power of two < head dim (chunked dots, Q reloaded per KV tile: fewer registers).
    """
    big = dk > 128
    if kind == "interp":  # modest tiles; launch options unused
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "SINGLE_LOOP": 0,
                "QK_CHUNK": 0}
    if kind == "nvidia":
        cfg = {"BLOCK_M": 64 if big else 128, "BLOCK_N": 64,
               "num_warps": 4 if dk <= 64 or big else 8, "num_stages": 2 if big else 3,
               "SINGLE_LOOP": 0, "QK_CHUNK": 0}
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
        cfg["num_stages"] = min(cfg["num_stages"], 2)
        cfg["BLOCK_M"] = 16 if kind == "rdna" else 64
        if kind == "nvidia":
            cfg["num_warps"] = 4
        if kind == "rdna":  # no fp32 WMMA: FMA dots hold a K-row per thread; chunk the head dim
            cfg["num_warps"], cfg["QK_CHUNK"] = 8, 32
    return cfg


def _fit_shared(cfg: dict, dk: int, dv: int, elem: int, lds_bytes: int) -> dict:
    """Shrink an NVIDIA prefill default until its shared memory (an upper estimate: the Q tile
    plus num_stages K and V tiles) fits the device (99 KiB on sm86/sm89, 227 KiB on sm90)."""
    cfg = dict(cfg)

    def need() -> int:
        return elem * (cfg["BLOCK_M"] * dk + cfg["num_stages"] * cfg["BLOCK_N"] * (dk + dv))

    while need() > lds_bytes:
        if cfg["num_stages"] > 2:
            cfg["num_stages"] -= 1
        elif cfg["BLOCK_N"] > 32:
            cfg["BLOCK_N"] //= 2
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
    """Launcher default for the decode kernel. MIN_PARTITION (keys per split, at least) and
    SPLITS_PER_CU (aim for this many programs per CU) drive the split-K choice."""
    big = dk > 128
    block_n = 32 if kind in ("rdna", "interp") or big else 64
    # rdna, d = 256: chunked Q K^T as in prefill (gfx1100 ~205 VGPRs at BLOCK_N 32).
    cfg = {"BLOCK_N": block_n, "num_warps": 4, "num_stages": 2 if kind == "nvidia" else 1,
           "MIN_PARTITION": 256, "SPLITS_PER_CU": 4,
           "QK_CHUNK": 64 if kind == "rdna" and big else 0}
    if elem == 4:
        cfg["BLOCK_N"] = max(16, block_n // 2)
        if kind == "rdna":  # see _prefill_default
            cfg["num_warps"], cfg["QK_CHUNK"] = 8, 32
    return cfg


def _reduce_default(kind: str) -> dict:
    return {"SPLIT_CHUNK": 16, "num_warps": 2 if kind == "cdna" else 4, "num_stages": 1}


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


# ----------------------------------------------------------------------------------------------
# launcher


def _check_int_tensor(name: str, x, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor, got {type(x).__name__}")
    if x.dtype != torch.int32:
        raise ValueError(f"{name}: expected int32, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {tuple(x.shape)}")


def _choose_partition(max_kv: int, n_programs: int, block_n: int, cfg: dict, info) -> int:
    """Keys per decode split: enough splits to give every CU SPLITS_PER_CU programs, none
    shorter than MIN_PARTITION keys, at most MAX_SPLITS splits; a multiple of BLOCK_N."""
    num_cus = info.num_cus if info is not None else 4
    want = max(1, -(-int(cfg["SPLITS_PER_CU"]) * num_cus // max(n_programs, 1)))
    part = max(int(cfg["MIN_PARTITION"]), -(-max_kv // want))
    part = max(part, -(-max_kv // MAX_SPLITS))
    return -(-part // block_n) * block_n


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
              num_heads: int, num_kv_heads: int, scale: float, sliding_window: int | None = None,
              softcap: float | None = None, max_query_len: int | None = None,
              max_seq_len: int | None = None, out: torch.Tensor | None = None, *,
              partition_size: int | None = None) -> torch.Tensor:
    """Paged causal attention with GQA. q [T, H*Dk] -> out [T, H*Dv] (q's dtype).

    k_cache [NB, BS, Hkv, Dk], v_cache [NB, BS, Hkv, Dv]; query_start_loc [B+1], seq_lens [B],
    block_tables [B, W] int32 on q's device. sliding_window None/0 = off, softcap None/0 = off.
    max_query_len / max_seq_len: host ints (ForwardBatch's). max_query_len == 1 selects the
    decode kernel (at most one query per sequence; sequences with none are skipped); otherwise, or
    when unknown, the varlen prefill kernel runs, which serves any mix. max_seq_len sizes the
    decode split grid (the block-table capacity W * BS when not given). No host sync.
    partition_size (keyword only, for tests and tuning): force the decode split length in keys.
    """
    # ---- validate ----------------------------------------------------------------------------
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
    num_heads, num_kv_heads = int(num_heads), int(num_kv_heads)
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
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale: must be finite, got {scale}")
    window = 0 if sliding_window is None else int(sliding_window)
    if window < 0:
        raise ValueError(f"sliding_window: must be None, 0 (off) or positive, got {sliding_window}")
    cap = 0.0 if softcap is None else float(softcap)
    if cap < 0 or not math.isfinite(cap):
        raise ValueError(f"softcap: must be None, 0 (off) or positive, got {softcap}")
    T = q.shape[0]
    if out is None:
        out = torch.empty((T, num_heads * dv), dtype=q.dtype, device=q.device)
    else:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (T, num_heads * dv):
            raise ValueError(f"out: expected shape {(T, num_heads * dv)}, got "
                             f"{tuple(getattr(out, 'shape', ()))}")
        if out.dtype != q.dtype or out.device != q.device:
            raise ValueError(f"out: expected {q.dtype} on {q.device}, got {out.dtype} on "
                             f"{out.device}")
        if out.stride(1) != 1 and out.shape[1] > 1:
            raise ValueError("out: the feature dim must be contiguous (stride 1)")
    if T == 0 or nseq == 0:
        return out

    # ---- shared arguments ----------------------------------------------------------------------
    G = num_heads // num_kv_heads
    softcap_on = cap > 0
    if softcap_on:
        qk_scale, cap_scale = 2.0 * LOG2E * scale / cap, cap * LOG2E
    else:
        qk_scale, cap_scale = scale * LOG2E, 1.0
    block_dk, block_dv = max(16, _pow2(dk)), max(16, _pow2(dv))
    info = _device_info() if q.is_cuda else None
    kind = _kind(info)
    elem = q.element_size()
    strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
               v_cache.stride(0), v_cache.stride(1), v_cache.stride(2))
    common = dict(SOFTCAP=softcap_on, WINDOW=window > 0,
                  DOT_F32=_interpreting() and k_cache.dtype == torch.bfloat16)

    if max_query_len is not None and int(max_query_len) == 1:
        # ---- decode ---------------------------------------------------------------------------
        if T > nseq:
            raise ValueError(f"max_query_len: is 1 but q has {T} rows for {nseq} sequences")
        cfg = tuning.get_config("attn_decode_f32" if elem == 4 else "attn_decode",
                                tuning.bucket(d=dk, g=G),
                                _decode_default(kind, dk, elem))
        ht = min(G, 64)
        nhc = -(-G // ht)
        block_n = int(cfg["BLOCK_N"])
        max_kv = int(max_seq_len) if max_seq_len is not None else block_tables.shape[1] * bs
        max_kv = max(max_kv, 1)
        if partition_size is not None:
            if int(partition_size) < 1:
                raise ValueError(f"partition_size: must be >= 1, got {partition_size}")
            part = max(int(partition_size), -(-max_kv // MAX_SPLITS))
        else:
            part = _choose_partition(max_kv, nseq * num_kv_heads * nhc, block_n, cfg, info)
        num_splits = -(-max_kv // part)
        split = num_splits > 1
        if split:
            part_ml = torch.empty((nseq, num_heads, num_splits, 2), dtype=torch.float32,
                                  device=q.device)
            part_acc = torch.empty((nseq, num_heads, num_splits, dv), dtype=torch.float32,
                                   device=q.device)
        else:
            part_ml = part_acc = out  # unused
        _attn_decode_kernel[(nseq, num_kv_heads * nhc, num_splits)](
            q, k_cache, v_cache, out, part_ml, part_acc, query_start_loc, seq_lens, block_tables,
            num_splits, part, q.stride(0), out.stride(0), block_tables.stride(0), *strides,
            qk_scale, cap_scale, window,
            H=num_heads, G=G, HT=ht, NHC=nhc, Dk=dk, Dv=dv, BLOCK_G=max(16, _pow2(ht)),
            BLOCK_N=block_n, BLOCK_DK=block_dk, BLOCK_DV=block_dv, BLOCK_SIZE=bs, SPLIT=split,
            QK_CHUNK=_qk_chunk(cfg, block_dk),
            **common, **_launch_opts(cfg, kind))
        if split:
            rcfg = tuning.get_config("attn_reduce", tuning.bucket(d=dv, s=num_splits),
                                     _reduce_default(kind))
            _attn_reduce_kernel[(nseq, num_heads)](
                out, part_ml, part_acc, query_start_loc, seq_lens, num_splits, part, out.stride(0),
                H=num_heads, Dv=dv, BLOCK_S=max(2, _pow2(num_splits)),
                SPLIT_CHUNK=int(rcfg["SPLIT_CHUNK"]), BLOCK_DV=block_dv, **_launch_opts(rcfg, kind))
        return out

    # ---- prefill / mixed -------------------------------------------------------------------------
    default = _prefill_default(kind, dk, elem)
    if kind == "nvidia":
        default = _fit_shared(default, dk, dv, elem, info.lds_bytes)
    cfg = tuning.get_config("attn_prefill_f32" if elem == 4 else "attn_prefill",
                            tuning.bucket(d=dk, g=G), default)
    block_m = int(cfg["BLOCK_M"])
    ht = min(G, block_m)
    nhc = -(-G // ht)
    bq = block_m // ht
    grid = (T // bq + nseq, num_kv_heads * nhc)
    _attn_prefill_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, nseq,
        q.stride(0), out.stride(0), block_tables.stride(0), *strides,
        qk_scale, cap_scale, window,
        G=G, HT=ht, NHC=nhc, BQ=bq, Dk=dk, Dv=dv, BLOCK_M=block_m, BLOCK_N=int(cfg["BLOCK_N"]),
        BLOCK_DK=block_dk, BLOCK_DV=block_dv, BLOCK_SIZE=bs, BLOCK_B=64,
        SINGLE_LOOP=bool(int(cfg["SINGLE_LOOP"])), QK_CHUNK=_qk_chunk(cfg, block_dk), **common,
        **_launch_opts(cfg, kind))
    return out


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
    """What the JIT's runtime specialisation says at the representative shape: every pointer
    (16-byte aligned) and every cache/activation stride (a multiple of 16 for head dims that
    are) is divisible by 16. Vectorised K/V loads depend on it; compiled without these hints
    the kernels scalarise every load and need several times the registers."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if sig[name].startswith("*") or (name.startswith("stride") and name != "stride_bt")}


def _derive_prefill(ce: dict) -> None:
    """Constexprs the launcher derives from BLOCK_M (for autotune.report's table entries)."""
    ht = min(ce["G"], ce["BLOCK_M"])
    ce.update(HT=ht, NHC=-(-ce["G"] // ht), BQ=ce["BLOCK_M"] // ht)


def compile_specs(kind: str = "rdna") -> list[dict]:
    """Every kernel x head dim (64, 128, 256) x dtype (fp16, bf16, fp32) with `kind`'s default
    tiles ("nvidia", "cdna", "rdna") and the constexpr flags (softcap, window, split) varied
    across specs. Shape: Llama-like GQA 32:8, cache block size 16. Each spec also carries
    "attrs" (divisibility hints, for ASTSource) as the JIT would specialise them, "kernel" and
    "bucket" (the tuning-table name and bucket the launcher asks for: fp32 has its own names,
    attn_prefill_f32 / attn_decode_f32, since FMA dots want other tiles than MMA ones) and, for
    prefill, "derive" (constexprs that follow from BLOCK_M)."""
    specs = []
    flags = [(False, False), (True, False), (False, True)]
    for di, d in enumerate((64, 128, 256)):
        for ti, dt in enumerate(("fp16", "bf16", "fp32")):
            elem = 4 if dt == "fp32" else 2
            softcap_on, window_on = flags[(di + ti) % 3]
            ptr = "*" + dt
            G = 4
            f32 = "_f32" if elem == 4 else ""
            b = tuning.bucket(d=d, g=G)
            # prefill
            cfg = _prefill_default(kind, d, elem)
            ht = min(G, cfg["BLOCK_M"])
            ce = dict(G=G, HT=ht, NHC=-(-G // ht), BQ=cfg["BLOCK_M"] // ht, Dk=d, Dv=d,
                      BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_DK=d, BLOCK_DV=d,
                      BLOCK_SIZE=16, BLOCK_B=64, SOFTCAP=softcap_on, WINDOW=window_on,
                      DOT_F32=False, SINGLE_LOOP=bool(cfg["SINGLE_LOOP"]),
                      QK_CHUNK=_qk_chunk(cfg, d))
            types = {"q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                     "qsl_ptr": "*i32", "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32",
                     "qk_scale": "fp32", "cap_scale": "fp32"}
            sig = _sig(_attn_prefill_kernel, types, ce)
            specs.append({"name": f"attn_prefill_d{d}_{dt}", "fn": _attn_prefill_kernel,
                          "kernel": "attn_prefill" + f32, "bucket": b,
                          "derive": _derive_prefill, "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_prefill_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
                          "options": {k: cfg[k] for k in tuning.AMD_ONLY_KEYS if k in cfg}})
            # decode
            cfg = _decode_default(kind, d, elem)
            split = (di + ti) % 2 == 0
            ce = dict(H=32, G=G, HT=G, NHC=1, Dk=d, Dv=d, BLOCK_G=16, BLOCK_N=cfg["BLOCK_N"],
                      BLOCK_DK=d, BLOCK_DV=d, BLOCK_SIZE=16, SOFTCAP=softcap_on, WINDOW=window_on,
                      SPLIT=split, DOT_F32=False, QK_CHUNK=_qk_chunk(cfg, d))
            types = {"q_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr, "out_ptr": ptr,
                     "part_ml_ptr": "*fp32", "part_acc_ptr": "*fp32", "qsl_ptr": "*i32",
                     "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32",
                     "qk_scale": "fp32", "cap_scale": "fp32"}
            sig = _sig(_attn_decode_kernel, types, ce)
            specs.append({"name": f"attn_decode_d{d}_{dt}", "fn": _attn_decode_kernel,
                          "kernel": "attn_decode" + f32, "bucket": b,
                          "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_decode_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
            # reduce
            cfg = _reduce_default(kind)
            ce = dict(H=32, Dv=d, BLOCK_S=64, SPLIT_CHUNK=cfg["SPLIT_CHUNK"], BLOCK_DV=d)
            types = {"out_ptr": ptr, "part_ml_ptr": "*fp32", "part_acc_ptr": "*fp32",
                     "qsl_ptr": "*i32", "seq_lens_ptr": "*i32"}
            sig = _sig(_attn_reduce_kernel, types, ce)
            specs.append({"name": f"attn_reduce_d{d}_{dt}", "fn": _attn_reduce_kernel,
                          "kernel": "attn_reduce", "bucket": tuning.bucket(d=d, s=64),
                          "signature": sig, "constexprs": ce,
                          "attrs": _attrs(_attn_reduce_kernel, sig),
                          "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    return specs


# The RDNA3 tiles are the smallest (and compile quickly for every target); compile_specs("cdna")
# and compile_specs("nvidia") give the other vendors' defaults.
COMPILE_SPECS: list[dict] = compile_specs("rdna")
