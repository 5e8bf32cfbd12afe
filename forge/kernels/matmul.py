"""linear: y = x @ W^T (+ bias) for weights in any supported GGML type, repacked by dequant.repack.

Three paths, chosen by the number of tokens T and the launch configs:
- decode (T <= MAX_T of the "linear_gemv" config): `_linear_gemv_kernel`, a fused dequant GEMV.
  Each program owns BLOCK_N output rows and up to 4 token rows and streams its slice of the packed
  weight planes once, BLOCK_K columns per step, decoding in registers and accumulating in
  float32; the next step's bytes are requested before this step is decoded (software
  pipelining by hand: Triton's pipeliner only handles loads that feed tl.dot). Each thread owns
  whole sub-blocks (the columns sharing one scale) of all BLOCK_N rows: it reads x for them once
  and reuses it for every row, decodes each scale once per row, and needs no shared memory and
  no barrier inside the loop (see the notes above `_gv_load`). The sub-block scale is factored
  out of the sum: acc += s * sum_j(q_j x_j) + b * sum_j x_j. Token blocks are the fastest grid
  dimension, so programs sharing a weight tile run together and the repeated reads hit L2.
  SPLIT_K > 1 splits K over programs (small N) and sums the float32 partials in
  `_linear_splitk_reduce_kernel` (deterministic, no atomics).
- prefill: `_linear_gemm_kernel`, a dequant GEMM on the matrix units (wgmma / MFMA / WMMA through
  tl.dot): BLOCK_M x BLOCK_N x BLOCK_K tiles, the weight tile decoded to the activation dtype in
  registers, float32 accumulators, num_stages pipelining, grouped program order for L2 reuse.
- large T (T >= DEQUANT_T of the "linear_gemm" config, 0 = never): dequantize the whole weight to
  the activation dtype once (dequant.dequantize) and call torch.matmul. Float weights already in
  the activation dtype always go to torch.matmul past the GEMV range, and so do float32
  activations (a debugging mode: an IEEE-precision fp32 tl.dot spills registers).

Activations may be float32, float16 or bfloat16; the result has x's dtype, accumulated in
float32. Float32 activations never pass through a lower precision.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from forge.kernels import tuning
from forge.kernels.specs import divisibility_attrs
from forge.kernels.dequant import (
    BF16,
    F16,
    F32,
    PLANES,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    TYPES,
    _apply_scale,
    _decode_tile,
    _f16_pair,
    check_qtensor,
    dequantize,
    plane_args,
    plane_signature,
)
from forge.runtime.backend import QTensor

ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_BLOCK_T = 4  # token rows one GEMV program accumulates
# Triton's CPU interpreter multiplies bfloat16 dot operands as their raw uint16 bits; there the
# GEMM upcasts bf16 tiles to float32 first (exact: bf16 products are exact in float32).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gemv_word(ggml_type: int) -> int:
    """E: columns per GEMV word (see the GEMV notes): 8 for bit-packed codes, 4 for Q8_0 (one
    int32), 16 bytes' worth for float weights (their SUB)."""
    info = TYPES[ggml_type]
    return 4 if info.name == "Q8_0" else 8 if info.block > 1 else info.sub


def gemv_block(ggml_type: int) -> int:
    """SG: columns per GEMV thread-block: the sub-block, or 16 for Q8_0 (16 B of int8 codes:
    one vector load; its scale is shared by two thread-blocks)."""
    info = TYPES[ggml_type]
    return 16 if info.name == "Q8_0" else info.sub


# ------------------------------------------------------------------------------------------------
# decode: fused dequant GEMV
#
# Tile of one step: [W, BLOCK_N, BB, E] = (word w of a sub-block, weight row, sub-block, element).
# A sub-block is SUB = W * E consecutive columns sharing one scale; E columns come from one
# 32-bit word of 4-bit codes (E = 8), one int16 of 2-bit codes, one byte of 1-bit codes, or one
# int32 of Q8_0 codes (E = 4); float weights use W = 1, E = 16 bytes' worth of elements. Lanes
# and warps run along the sub-block axis (BB = lanes x warps), and all BLOCK_N rows of a sub-block
# sit in one thread's registers. Consequences, all checked on the TTGIR/SASS:
# - each thread reads its sub-block's words as one vector (dim 0 is contiguous in memory);
# - x is read once per thread and step ([W, 1, BB, E], 16 B vectors) and reused for every row;
# - the weight tile and x get the same lanes/warps, so no layout conversion goes through shared
#   memory and the loop has no barrier;
# - the scales are decoded once per (row, sub-block).
# Codes become floats with the 2^23 trick (bits 0x4B000000 | c is the float 2^23 + c), which
# uses full-rate integer/FP32 ops instead of the quarter-rate integer-to-float conversion.


@triton.jit
def _noncontig(i):
    """i, but opaque to Triton's contiguity analysis: a plane read with one element per
    sub-block would otherwise be vectorized across sub-blocks, i.e. across lanes, unlike the rest
    of the tile (and converted through shared memory every step)."""
    return (i * 2) // 2


@triton.jit
def _gv_load(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r64, rmask, b0, b_end, K,
             TYPE: tl.constexpr, SUB: tl.constexpr, SG: tl.constexpr, E: tl.constexpr,
             BB: tl.constexpr):
    """Issue one GEMV step's loads: thread-blocks b0 .. b0 + BB - 1 of SG columns (>= b_end
    masked off). SG is SUB, or 16 for Q8_0 (16 B of codes per thread-block); the scale of
    thread-block b belongs to sub-block b // (SUB // SG).
    Returns (qr [W, BN, BB, 1 or E], hr [W, BN, BB, 1] or 0, scr, dr [1, BN, BB, 1] or 0)."""
    W: tl.constexpr = SG // E
    R: tl.constexpr = SUB // SG
    r4 = r64[None, :, None, None]
    b4 = b0 + tl.arange(0, BB)[None, None, :, None]
    w4 = tl.arange(0, W)[:, None, None, None]
    m4 = rmask[None, :, None, None] & (b4 < b_end)
    wi = b4 * W + w4                                     # word (E columns) index in the row
    hr = 0
    scr = 0
    dr = 0
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        k = wi * E + tl.arange(0, E)[None, None, None, :]
        qr = tl.load(q_ptr + r4 * s_q + k, mask=m4 & (k < K), other=0.0)
    elif TYPE == Q2_K or TYPE == Q3_K:                  # 2-bit codes: one int16 per 8 columns
        qr = tl.load(q_ptr.to(tl.pointer_type(tl.int16)) + r4 * (s_q // 2) + wi, mask=m4, other=0)
    else:                                                # 4-bit codes / Q8_0: one int32 per word
        qr = tl.load(q_ptr.to(tl.pointer_type(tl.int32)) + r4 * (s_q // 4) + wi, mask=m4, other=0)
    if TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q3_K:   # 1 bit: a byte per word
        hr = tl.load(qh_ptr + r4 * s_qh + wi, mask=m4, other=0)
    if TYPE == Q6_K:                                     # 2 high bits: an int16 per word
        hr = tl.load(qh_ptr.to(tl.pointer_type(tl.int16)) + r4 * (s_qh // 2) + wi, mask=m4,
                     other=0)
    if R == 1:
        sub = _noncontig(b4)
    else:
        sub = b4 // R
    if TYPE == Q2_K or TYPE == Q3_K or TYPE == Q4_K or TYPE == Q5_K or TYPE == Q6_K:
        scr = tl.load(sc_ptr + r4 * s_sc + sub, mask=m4, other=0)
        dr = tl.load(d_ptr + r4 * s_d + b4 // (256 // SG), mask=m4, other=0)
    elif TYPE != F32 and TYPE != F16 and TYPE != BF16:   # legacy: one d (or d|m) per block
        dr = tl.load(d_ptr + r4 * s_d + sub, mask=m4, other=0)
    return qr, hr, scr, dr


@triton.jit
def _codes(v, BITS: tl.constexpr, E: tl.constexpr):
    """Unsigned fields of BITS bits: v [W, BN, BB, 1] (any int) -> uint32 [W, BN, BB, E], field j
    from bits j*BITS .. j*BITS + BITS - 1 (v read as unsigned)."""
    u = v.to(tl.uint32)
    if v.dtype.primitive_bitwidth < 32:
        u = u & ((1 << v.dtype.primitive_bitwidth) - 1)   # drop sign extension
    sh = (tl.arange(0, E) * BITS).to(tl.uint32)[None, None, None, :]
    return (u >> sh) & ((1 << BITS) - 1)


@triton.jit
def _magic(c, offset: tl.constexpr):
    """uint32 codes c < 2^23 -> float32 c - offset, exactly (2^23 + c as bits, minus 2^23)."""
    return (c | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + offset)


@triton.jit
def _gv_decode(qr, hr, scr, dr, TYPE: tl.constexpr, E: tl.constexpr):
    """-> (q float32 [W, BN, BB, E], s, b float32 [1, BN, BB, 1]), w = q * s + b."""
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        q = qr.to(tl.float32)
        s = 0.0
        b = 0.0
    elif TYPE == Q8_0:      # bytes of a word, sign flipped so that c = code + 128 >= 0
        q = _magic(_codes(qr, 8, E) ^ 0x80, 128.0)
        s = dr.to(tl.float32)
        b = 0.0
    elif TYPE == Q2_K:
        q = _magic(_codes(qr, 2, E), 0.0)
        d, dmin = _f16_pair(dr)
        s = d * (scr & 15).to(tl.float32)
        b = -(dmin * (scr >> 4).to(tl.float32))
    elif TYPE == Q3_K:
        q = _magic(_codes(qr, 2, E) | (_codes(hr, 1, E) << 2), 4.0)
        s = dr.to(tl.float32) * scr.to(tl.float32)
        b = 0.0
    elif TYPE == Q6_K:
        q = _magic(_codes(qr, 4, E) | (_codes(hr, 2, E) << 4), 32.0)
        s = dr.to(tl.float32) * scr.to(tl.float32)
        b = 0.0
    else:                   # 4-bit low codes: Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K
        c = _codes(qr, 4, E)
        if TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K:
            c = c | (_codes(hr, 1, E) << 4)
        if TYPE == Q4_0:
            q = _magic(c, 8.0)
        elif TYPE == Q5_0:
            q = _magic(c, 16.0)
        else:
            q = _magic(c, 0.0)
        if TYPE == Q4_K or TYPE == Q5_K:
            d, dmin = _f16_pair(dr)
            s = d * (scr & 255).to(tl.float32)
            b = -(dmin * (scr >> 8).to(tl.float32))
        elif TYPE == Q4_1 or TYPE == Q5_1:
            s, b = _f16_pair(dr)
        else:
            s = dr.to(tl.float32)
            b = 0.0
    return q, s, b


@triton.jit
def _gemv_row_term(x_ptr, t, T, K, stride_x, b0, b_end, q, s, b, acc,
                   TYPE: tl.constexpr, SG: tl.constexpr, E: tl.constexpr, BB: tl.constexpr):
    """acc [1, BN, BB, 1] += the contribution of token row t (nothing when t >= T)."""
    W: tl.constexpr = SG // E
    b4 = b0 + tl.arange(0, BB)[None, None, :, None]
    k = (b4 * W + tl.arange(0, W)[:, None, None, None]) * E + tl.arange(0, E)[None, None, None, :]
    xm = (b4 < b_end) & (k < K) & ((k * 0 + t) < T)
    x = tl.load(x_ptr + t.to(tl.int64) * stride_x + k, mask=xm, other=0.0).to(tl.float32)
    dot = tl.sum(tl.sum(q * x, axis=3, keep_dims=True), axis=0, keep_dims=True)
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        acc += dot
    elif TYPE == Q4_1 or TYPE == Q5_1 or TYPE == Q2_K or TYPE == Q4_K or TYPE == Q5_K:
        xs = tl.sum(tl.sum(x, axis=3, keep_dims=True), axis=0, keep_dims=True)
        acc += s * dot + b * xs
    else:
        acc += s * dot
    return acc


@triton.jit
def _gemv_store(acc, t, T, rows, rmask, bias_ptr, out_ptr, stride_o, pid_k, N,
                HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    y = tl.sum(tl.reshape(acc, (acc.shape[1], acc.shape[2])), axis=1)   # [BN]
    m = rmask & ((rows * 0 + t) < T)
    if SPLIT:
        # partials [SPLIT_K, T, N] float32
        tl.store(out_ptr + (pid_k.to(tl.int64) * T + t) * N + rows, y, mask=m)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(out_ptr + t.to(tl.int64) * stride_o + rows, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _linear_gemv_kernel(
    x_ptr,                          # [T, K] act dtype, row stride stride_x
    q_ptr, qh_ptr, sc_ptr, d_ptr,   # weight planes [N, *] (dequant.py)
    s_q, s_qh, s_sc, s_d,           # their row strides (elements)
    bias_ptr,                       # [N] (HAS_BIAS)
    out_ptr,                        # [T, N] act dtype (row stride stride_o) | [SPLIT_K, T, N] f32
    T, N, K, NB, stride_x, stride_o, BLOCKS_PER_SPLIT,
    TYPE: tl.constexpr, SUB: tl.constexpr, SG: tl.constexpr, E: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
):
    tl.static_assert(BLOCK_T == 1 or BLOCK_T == 2 or BLOCK_T == 4, "BLOCK_T must be 1, 2 or 4")
    BB: tl.constexpr = BLOCK_K // SG                    # thread-blocks (of SG columns) per step
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    pid_t = pid % n_tb          # token blocks fastest: programs sharing a weight tile run together
    pid_n = pid // n_tb
    t0 = pid_t * BLOCK_T
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    b_begin = pid_k * BLOCKS_PER_SPLIT
    b_end = tl.minimum(b_begin + BLOCKS_PER_SPLIT, NB)
    acc0 = tl.zeros((1, BLOCK_N, BB, 1), tl.float32)
    acc1 = tl.zeros((1, BLOCK_N, BB, 1), tl.float32)
    acc2 = tl.zeros((1, BLOCK_N, BB, 1), tl.float32)
    acc3 = tl.zeros((1, BLOCK_N, BB, 1), tl.float32)
    qr, hr, scr, dr = _gv_load(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                               r64, rmask, b_begin, b_end, K, TYPE, SUB, SG, E, BB)
    for b0 in range(b_begin, b_end, BB):
        # Software pipelining by hand (Triton pipelines only loads that feed tl.dot): request
        # the next step's bytes before decoding this one (all masked off after the last step).
        nq, nh, nsc, nd = _gv_load(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                                   r64, rmask, b0 + BB, b_end, K, TYPE, SUB, SG, E, BB)
        q, s, b = _gv_decode(qr, hr, scr, dr, TYPE, E)
        acc0 = _gemv_row_term(x_ptr, t0, T, K, stride_x, b0, b_end, q, s, b, acc0,
                              TYPE, SG, E, BB)
        if BLOCK_T > 1:
            acc1 = _gemv_row_term(x_ptr, t0 + 1, T, K, stride_x, b0, b_end, q, s, b, acc1,
                                  TYPE, SG, E, BB)
        if BLOCK_T > 2:
            acc2 = _gemv_row_term(x_ptr, t0 + 2, T, K, stride_x, b0, b_end, q, s, b, acc2,
                                  TYPE, SG, E, BB)
            acc3 = _gemv_row_term(x_ptr, t0 + 3, T, K, stride_x, b0, b_end, q, s, b, acc3,
                                  TYPE, SG, E, BB)
        qr, hr, scr, dr = nq, nh, nsc, nd
    _gemv_store(acc0, t0, T, rows, rmask, bias_ptr, out_ptr, stride_o, pid_k, N, HAS_BIAS, SPLIT)
    if BLOCK_T > 1:
        _gemv_store(acc1, t0 + 1, T, rows, rmask, bias_ptr, out_ptr, stride_o, pid_k, N,
                    HAS_BIAS, SPLIT)
    if BLOCK_T > 2:
        _gemv_store(acc2, t0 + 2, T, rows, rmask, bias_ptr, out_ptr, stride_o, pid_k, N,
                    HAS_BIAS, SPLIT)
        _gemv_store(acc3, t0 + 3, T, rows, rmask, bias_ptr, out_ptr, stride_o, pid_k, N,
                    HAS_BIAS, SPLIT)


@triton.jit
def _linear_splitk_reduce_kernel(
    part_ptr,    # [SPLIT_K, T*N] float32 partial sums
    bias_ptr,    # [N] (HAS_BIAS)
    out_ptr,     # [T, N] act dtype, row stride stride_o
    TN, N, stride_o,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < TN
    acc = tl.zeros((BLOCK,), tl.float32)
    for k in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + k * TN.to(tl.int64) + offs, mask=m, other=0.0)
    col = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + col, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + (offs // N) * stride_o + col, acc.to(out_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------------------------
# prefill: dequant GEMM


@triton.jit
def _linear_gemm_kernel(
    x_ptr,                          # [T, K] act dtype, row stride stride_x
    q_ptr, qh_ptr, sc_ptr, d_ptr,   # weight planes [N, *] (dequant.py)
    s_q, s_qh, s_sc, s_d,           # their row strides (elements)
    bias_ptr,                       # [N] (HAS_BIAS)
    out_ptr,                        # [T, N] act dtype, row stride stride_o
    T, N, K, NSUB, stride_x, stride_o,
    TYPE: tl.constexpr, SUB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    BLOCK_K: tl.constexpr = BLOCK_S * SUB
    pid = tl.program_id(0)
    num_m = tl.cdiv(T, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row blocks of x sweep the weight column blocks together (L2 reuse)
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % gsize
    pid_n = (pid % width) // gsize

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < T
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_x
    act = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for s0 in range(0, NSUB, BLOCK_S):
        q, s, b = _decode_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                               r64, rmask, s0, NSUB, K, TYPE, SUB, SUB, BLOCK_S)
        w = tl.reshape(_apply_scale(q, s, b, TYPE).to(act), (BLOCK_N, BLOCK_K))
        k = s0 * SUB + kk
        x = tl.load(x_rows + k[None, :], mask=mmask[:, None] & (k < K)[None, :], other=0.0)
        if DOT_UPCAST:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    optr = out_ptr + offs_m.to(tl.int64)[:, None] * stride_o + rows[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & rmask[None, :])


# ------------------------------------------------------------------------------------------------
# configs


def _device() -> tuple[str, int, int]:
    """(vendor, compute units, warp size) of the current GPU; ("none", 16, 32) without one."""
    from forge.runtime import device

    info = device.detect()
    return (info.vendor, info.num_cus, info.warp_size) if info is not None else ("none", 16, 32)


def gemv_default(ggml_type: int, T: int, N: int, K: int, cus: int = 16, warp: int = 32,
                 vendor: str = "nvidia", interpreter: bool = False) -> dict:
    """Launcher default for "linear_gemv".

    4 warps; a step covers warp_size x 4 sub-blocks (BLOCK_K = 4096 columns for 32-column
    sub-blocks on a 32-wide warp; less for rows shorter than that, with fewer warps), each
    thread one sub-block of BLOCK_N rows: up to 8 rows at T = 1, fewer for wider codes or
    when a program also carries 2 or 4 token rows (x costs 32 registers per token row).
    BLOCK_K must stay lanes x warps x SUB for the shared-memory-free layout (other values work,
    slower). With fewer than 2 programs per compute unit (small N), rows per program drop
    first, then SPLIT_K splits K. num_stages is unused: the kernel prefetches by hand.
    Under the CPU interpreter BLOCK_N is 16 whatever the type (fewer, larger programs).
    """
    info = TYPES[ggml_type]
    sg = gemv_block(ggml_type)
    bb = min(warp * 4, triton.next_power_of_2(triton.cdiv(K, sg)))  # short rows: a short step
    warps = max(1, min(4, bb // warp))
    bk = sg * bb
    bt = _block_t(T)
    # rows per thread: ~160 B of packed weights per thread and step (twice that in flight with
    # the prefetch), i.e. 8 rows of 4-bit codes, 4 of Q8_0 / Q5_*; half that on AMD, whose
    # compiled decode needs more registers (8 rows of Q4_K spill on gfx1100 and take 376 VGPRs,
    # one wave per SIMD, on gfx942)
    sub_bytes = info.type_size * gemv_block(ggml_type) // info.block
    budget = 80 if vendor == "amd" else 160
    bn = 8
    while bn > 1 and bn * sub_bytes > budget:
        bn //= 2
    bn = max(1, bn // bt)
    if interpreter:
        bn = 16  # no registers to save on the CPU; fewer programs run faster there
    n_tb = triton.cdiv(max(T, 1), bt)
    # at least 2 programs per compute unit (all resident at once: 8 rows of Q4_K at 128
    # registers allow 4 per SM on Hopper): fewer rows per program for small N (GQA k/v
    # projections), then split K (possible only when a row takes several steps)
    while not interpreter and bn > 1 and triton.cdiv(N, bn) * n_tb < 2 * cus:
        bn //= 2
    steps = triton.cdiv(K, bk)
    split = 1
    while triton.cdiv(N, bn) * n_tb * split < 2 * cus and split < min(8, steps):
        split *= 2
    return {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "MAX_T": 8,
            "num_warps": warps, "num_stages": 1}


def gemm_default(ggml_type: int, T: int, N: int, K: int, vendor: str = "amd") -> dict:
    """Launcher default for "linear_gemm".

    BLOCK_M follows T up to 64 (128 on NVIDIA, whose shared memory holds 128 x 128 x 64 tiles
    at 3 stages; AMD's 64 KiB LDS takes 64 x 64 x 64 at 2 stages). Small T gets narrow N tiles
    so that enough programs stream the weight.
    """
    sub = TYPES[ggml_type].sub
    big = vendor == "nvidia"
    bm = 16 if T <= 16 else 32 if T <= 32 else 64 if (T <= 64 or not big) else 128
    bn = 32 if T <= 32 else 128 if bm == 128 else 64
    warps = 8 if bm * bn >= 128 * 128 else 4
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_S": max(1, 64 // sub), "GROUP_M": 8,
            "DEQUANT_T": 0, "num_warps": warps, "num_stages": 3 if big else 2}


def _cfg(kernel: str, ggml_type: int, dims: dict, default: dict) -> dict:
    """Generic entry for `kernel`, then a type-specific one ("linear_gemv.Q4_K") over it."""
    b = tuning.bucket(**dims)
    base = tuning.get_config(kernel, b, default)
    return tuning.get_config(f"{kernel}.{TYPES[ggml_type].name}", b, base)


@functools.lru_cache(maxsize=4096)
def _configs(ggml_type: int, T: int, N: int, K: int) -> tuple[dict, dict]:
    dims = {"T": T, "N": N, "K": K}
    vendor, cus, warp = _device()
    gv = gemv_default(ggml_type, T, N, K, cus, warp, vendor, interpreter=_INTERPRET)
    return (_cfg("linear_gemv", ggml_type, dims, gv),
            _cfg("linear_gemm", ggml_type, dims, gemm_default(ggml_type, T, N, K, vendor)))


def clear_config_cache() -> None:
    """Forget resolved launch configs (after changing a tuning table)."""
    _configs.cache_clear()


def _block_t(T: int) -> int:
    return 1 if T <= 1 else 2 if T == 2 else MAX_BLOCK_T


# ------------------------------------------------------------------------------------------------
# launcher


def _check(x: torch.Tensor, w: QTensor, bias, out):
    info = check_qtensor("w", w)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != w.cols:
        raise ValueError(f"x: expected shape (T, {w.cols}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"x: expected float32/float16/bfloat16, got {x.dtype}")
    dev = w.data["q"].device
    if x.device != dev:
        raise ValueError(f"x: on {x.device}, the weight is on {dev}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (w.rows,) or bias.device != dev:
            raise ValueError(f"bias: expected a tensor of shape ({w.rows},) on {dev}")
        if bias.dtype not in ACT_DTYPES:
            raise ValueError(f"bias: expected a float tensor, got {bias.dtype}")
    if out is not None:
        if out.shape != (x.shape[0], w.rows) or out.dtype != x.dtype or out.device != dev \
                or out.stride(1) != 1:
            raise ValueError(f"out: expected {x.dtype} {(x.shape[0], w.rows)} with unit column "
                             f"stride on {dev}")
    return info


def linear(x: torch.Tensor, w: QTensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, w.cols] (f32/f16/bf16) @ W^T -> [T, w.rows] in x's dtype, plus bias [w.rows]."""
    info = _check(x, w, bias, out)
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    T = x.shape[0]
    N, K = w.shape
    if out is None:
        out = torch.empty((T, N), dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    gv, gm = _configs(w.ggml_type, T, N, K)
    planes = plane_args(w)
    bias_arg = bias if bias is not None else out
    if T <= gv["MAX_T"]:
        bt = _block_t(T)
        sg = gemv_block(w.ggml_type)
        bn, bk = gv["BLOCK_N"], max(gv["BLOCK_K"], sg)
        nb, bb = triton.cdiv(K, sg), bk // sg               # thread-blocks: per row, per step
        split = max(1, min(int(gv["SPLIT_K"]), triton.cdiv(nb, bb)))
        per = triton.cdiv(triton.cdiv(nb, split), bb) * bb  # sub-blocks per split, whole steps
        split = triton.cdiv(nb, per)
        grid = (triton.cdiv(N, bn) * triton.cdiv(T, bt), split)
        dst = out if split == 1 else torch.empty((split, T, N), dtype=torch.float32,
                                                 device=x.device)
        _linear_gemv_kernel[grid](
            x, *planes, bias_arg, dst, T, N, K, nb, x.stride(0), out.stride(0), per,
            TYPE=w.ggml_type, SUB=info.sub, SG=sg, E=gemv_word(w.ggml_type), BLOCK_T=bt, BLOCK_N=bn,
            BLOCK_K=bk,
            HAS_BIAS=bias is not None, SPLIT=split > 1,
            num_warps=gv["num_warps"], num_stages=gv["num_stages"])
        if split > 1:
            blk = 1024
            _linear_splitk_reduce_kernel[(triton.cdiv(T * N, blk),)](
                dst, bias_arg, out, T * N, N, out.stride(0),
                SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=blk, num_warps=4)
        return out
    if info.block == 1 and w.data["q"].dtype == x.dtype:  # same-dtype float weight: cuBLAS/rocBLAS
        torch.matmul(x, w.data["q"][:, :K].t(), out=out)
        if bias is not None:
            out += bias.to(out.dtype)
        return out
    if x.dtype == torch.float32 or (gm["DEQUANT_T"] and T >= gm["DEQUANT_T"]):
        # float32 activations (a debugging mode) always come here: an IEEE fp32 tl.dot spills.
        torch.matmul(x, dequantize(w, dtype=x.dtype).t(), out=out)
        if bias is not None:
            out += bias.to(out.dtype)
        return out
    bm, bn, bs = gm["BLOCK_M"], gm["BLOCK_N"], gm["BLOCK_S"]
    grid = (triton.cdiv(T, bm) * triton.cdiv(N, bn),)
    _linear_gemm_kernel[grid](
        x, *planes, bias_arg, out, T, N, K, triton.cdiv(K, info.sub), x.stride(0), out.stride(0),
        TYPE=w.ggml_type, SUB=info.sub, BLOCK_M=bm, BLOCK_N=bn, BLOCK_S=bs,
        GROUP_M=gm["GROUP_M"], HAS_BIAS=bias is not None,
        DOT_UPCAST=_INTERPRET and x.dtype == torch.bfloat16,
        num_warps=gm["num_warps"], num_stages=gm["num_stages"],
        **{k: gm[k] for k in ("waves_per_eu", "matrix_instr_nonkdim", "kpack") if k in gm})
    return out


# ------------------------------------------------------------------------------------------------
# COMPILE_SPECS


# Every type gets its batch-1 GEMV and its prefill GEMM compiled; the other variants (token
# blocks, split-K, fp16/fp32 activations, small-T and NVIDIA GEMM tiles) are compiled for a
# representative subset of types (they share every type-specific line with the ones above).
SPEC_FULL_TYPES = ("F16", "Q8_0", "Q4_K", "Q6_K")
# Integer arguments that are multiples of 16 at the representative shape (N = K = 4096, plane
# rows padded to 16 elements), as the JIT would specialise them at a real launch.
_DIV16 = ("N", "K", "NB", "NSUB", "stride_x", "stride_o") + tuple(f"s_{p}" for p in PLANES)


def _compile_specs() -> list[dict]:
    specs = []
    strides = {f"s_{p}": "i32" for p in PLANES}
    for tid, info in TYPES.items():
        full = info.name in SPEC_FULL_TYPES
        # (activation, token rows, split-K, warp size, vendor): the defaults of each arch family
        gemv_variants = [("*bf16", 1, False, 32, "nvidia"), ("*bf16", 1, False, 32, "amd"),
                         ("*bf16", 1, False, 64, "amd")]
        if full:
            gemv_variants += [("*bf16", 4, False, 32, "nvidia"), ("*bf16", 1, True, 32, "nvidia"),
                              ("*fp16", 1, False, 32, "nvidia"), ("*fp32", 1, False, 32, "nvidia"),
                              ("*bf16", 4, False, 64, "amd"), ("*bf16", 4, False, 32, "amd")]
        for act, bt, split, warp, vendor in gemv_variants:
            gv = gemv_default(tid, bt, 4096, 4096, warp=warp, vendor=vendor)
            family = "cdna" if warp == 64 else "rdna" if vendor == "amd" else "nvidia"
            sig = {"x_ptr": act, **plane_signature(tid), **strides, "bias_ptr": act,
                   "out_ptr": "*fp32" if split else act, "T": "i32", "N": "i32", "K": "i32",
                   "NB": "i32", "stride_x": "i32", "stride_o": "i32", "BLOCKS_PER_SPLIT": "i32"}
            specs.append({
                "name": (f"_linear_gemv_kernel[{info.name},{act[1:]},T{bt}"
                         f"{',split' if split else ''},{family}]"),
                "fn": _linear_gemv_kernel, "signature": sig,
                "attrs": divisibility_attrs(_linear_gemv_kernel, sig, _DIV16),
                "constexprs": {"TYPE": tid, "SUB": info.sub, "SG": gemv_block(tid),
                               "E": gemv_word(tid), "BLOCK_T": bt, "BLOCK_N": gv["BLOCK_N"],
                               "BLOCK_K": gv["BLOCK_K"], "HAS_BIAS": not split, "SPLIT": split},
                "num_warps": gv["num_warps"], "num_stages": gv["num_stages"],
                # informational: the arch family whose launcher default this is
                "vendors": ("nvidia",) if vendor == "nvidia" else ("amd",),
            })
        # (float32 activations never reach the GEMM: they take dequantize + torch.matmul)
        gemm_variants = [("*bf16", 512, "amd")]
        if full:
            gemm_variants += [("*fp16", 512, "amd"), ("*bf16", 16, "amd"), ("*bf16", 512, "nvidia")]
        for act, T, vendor in gemm_variants:
            gm = gemm_default(tid, T, 4096, 4096, vendor)
            sig = {"x_ptr": act, **plane_signature(tid), **strides, "bias_ptr": act,
                   "out_ptr": act, "T": "i32", "N": "i32", "K": "i32", "NSUB": "i32",
                   "stride_x": "i32", "stride_o": "i32"}
            specs.append({
                "name": f"_linear_gemm_kernel[{info.name},{act[1:]},T{T},{vendor}]",
                "fn": _linear_gemm_kernel, "signature": sig,
                "attrs": divisibility_attrs(_linear_gemm_kernel, sig, _DIV16),
                "constexprs": {"TYPE": tid, "SUB": info.sub, "BLOCK_M": gm["BLOCK_M"],
                               "BLOCK_N": gm["BLOCK_N"], "BLOCK_S": gm["BLOCK_S"],
                               "GROUP_M": gm["GROUP_M"], "HAS_BIAS": True, "DOT_UPCAST": False},
                "num_warps": gm["num_warps"], "num_stages": gm["num_stages"],
                # informational: the launcher default picks the 128x128 tiles only on NVIDIA
                "vendors": ("nvidia",) if vendor == "nvidia" else ("amd", "nvidia"),
            })
    for act in ("*bf16", "*fp16", "*fp32"):
        specs.append({
            "name": f"_linear_splitk_reduce_kernel[{act[1:]}]",
            "fn": _linear_splitk_reduce_kernel,
            "signature": {"part_ptr": "*fp32", "bias_ptr": act, "out_ptr": act, "TN": "i32",
                          "N": "i32", "stride_o": "i32"},
            "constexprs": {"SPLIT_K": 4, "HAS_BIAS": True, "BLOCK": 1024},
            "num_warps": 4, "num_stages": 1,
        })
    return specs


COMPILE_SPECS: list[dict] = _compile_specs()
