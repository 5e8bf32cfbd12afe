"""Small-T GEMM for the K-quants (Q4_K, Q6_K) on the matrix units: batch decode's linear.

The general dequant GEMM (`matmul._linear_gemm_kernel`) decodes each weight to its float value
w = d * sc * q - dmin * m before the dot: ~11 instructions per weight on sm90 (a nibble, the
2^23 float trick, the scale product, the bf16 pack, the operand layout), with 32 token rows to
share them. At batch 32 that made the 8B model's Q4_K weights stream at 0.15-0.75 TB/s.

Here the dot runs on scaled integer codes and the float scales come after it:

  Q4_K  sum_k x_k w_k = d * sum_k x_k (sc_j q_k) - dmin * sum_j m_j (sum_{k in j} x_k)
  Q6_K  sum_k x_k w_k = d * sum_k x_k (sc_j (q_k - 32))

per 256-element super-block (one d / dmin per weight row), j the 32- (Q4_K) or 16-element
(Q6_K) sub-block. The Q4_K min term is folded into the operand: it is
sc_j q_k - (dmin / d) m_j (times 2^-11), so one dot per super-block serves both terms, and the
dot's float32 sums are scaled by 2048 d (a super-block with d = 0 takes -m_j, scaled by 2048 dmin).
Q6_K's operand is sc_j (q_k - 32) 2^-13, scaled by 8192 d. Each operand is rounded once to bf16:
2^-9 of its largest term, what rounding the decoded weight to bf16 costs the general GEMM.

ASM (NVIDIA): each bf16 pair of operands comes from one byte of codes. A bf16 with bit pattern
b < 256 is b * 2^-133 (subnormal, or the lowest exponent: still linear in b), so the codes are
used as they sit in the byte: PRMT copies the byte to both halves, one AND keeps the low nibble in
one and the high nibble (worth 16 q) in the other, and one bf16x2 FMA with the per-half scales
and the bias gives both operands, exact before its one rounding: 3 instructions per pair (Q4_K;
Q6_K adds its high bits: 7), 5.2 / 9.3 SASS instructions per weight in the whole loop against
11.2 for the general GEMM (sm90 compile). Without ASM (the CPU interpreter, AMD), plain Triton
computes the same operands bit for bit (test_kgemm checks it on a GPU).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from forge.kernels import env, pdl, tuning
from forge.kernels.dequant import (Q4_K, Q6_K, QK_K, TYPE_IDS, TYPES, jit_attrs, plane_args,
                                   plane_signature)
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.runtime.backend import QTensor

_INTERPRET = env.interpreting()

# PTX for one bf16 pair of Q4_K operands from byte i of a word of codes ($2: the prmt selector):
# the byte copied to halves 0 and 1 (zeros elsewhere), masked to its low nibble in half 0 and its
# high nibble (bits 4-7) in half 1. A bf16 with bit pattern b < 256 is b * 2^-133 (subnormal, or
# the smallest exponent: the value stays linear in b), so one bf16x2 FMA with the scales
# $3 = (sc 2^122, sc 2^118) and the bias $4 gives sc q 2^-11 + bias in both, exact before its
# one rounding.
_Q4K_PAIR = tl.constexpr("""{
.reg .b32 t, z, m;
mov.b32 z, 0;
mov.b32 m, 0x00F0000F;
prmt.b32 t, $1, z, $2;
and.b32 t, t, m;
fma.rn.bf16x2 $0, t, $3, $4;
}""")

# Q6_K: halves 0 and 1 take the 4 low bits of bytes i of w ($1) and w >> 4 and the 2 high bits
# of bytes i of h ($2) and h >> 2 (h: the qh word shifted so that the pair's fields sit at bits
# 4-5 and 6-7 of byte i): the 6-bit codes q, as b * 2^-133 again; the FMA with $4 = sc 2^120 (both
# halves) and the bias $5 = -32 sc 2^-13 gives sc (q - 32) 2^-13.
_Q6K_PAIR = tl.constexpr("""{
.reg .b32 t, u, v, m;
shr.u32 u, $1, 4;
prmt.b32 t, $1, u, $3;
shr.u32 u, $2, 2;
prmt.b32 v, $2, u, $3;
mov.b32 m, 0x00300030;
and.b32 v, v, m;
mov.b32 m, 0x000F000F;
lop3.b32 t, t, m, v, 0xEA;
fma.rn.bf16x2 $0, t, $4, $5;
}""")

# (f, f) rounded to a bf16 pair, times the bf16 pair $2 (exact for the powers of two used here).
_SCALE_PAIR = tl.constexpr("""{
.reg .b32 t;
cvt.rn.bf16x2.f32 t, $1, $1;
mul.rn.bf16x2 $0, t, $2;
}""")


@triton.jit
def _bf16_pair(f):
    """float32 f -> int32 holding (bf16(f), bf16(f)) (NVIDIA)."""
    return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $1, $1;", "=r,r", [f],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _sum_to_odd(a, b):
    """float32 a + b rounded to odd (then exact to round once more to a narrower format)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    bits = s.to(tl.int32, bitcast=True)
    up = (err > 0) == (s > 0)                      # toward the exact value, away from zero?
    fix = (err != 0) & ((bits & 1) == 0)
    bits = tl.where(fix, tl.where(up, bits + 1, bits - 1), bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _pairs_to_bf16(p):
    """int32 bf16x2 pairs [..., C] -> bf16 [..., C, 2] (low half first)."""
    lo = (p & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
    hi = (p >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _q4k_operand(qp, sc_ptr, d_ptr, rows, rmask, s_q, s_sc, s_d, sb, ASM: tl.constexpr):
    """One super-block of BN weight rows -> (bf16 [BN, 256] operand, float32 [BN] its scale)."""
    BN: tl.constexpr = rows.shape[0]
    r3 = rows.to(tl.int64)[:, None, None]
    m3 = rmask[:, None, None]
    j3 = tl.arange(0, 8)[None, :, None]
    c3 = tl.arange(0, 4)[None, None, :]
    # words [BN, 8 sub-blocks, 4]: word c of sub-block j holds elements 32j + 8c .. + 7
    w = tl.load(qp + r3 * (s_q // 4) + sb * 32 + j3 * 4 + c3, mask=m3, other=0)
    scm = tl.load(sc_ptr + r3 * s_sc + sb * 8 + j3, mask=m3, other=0).to(tl.int32)   # [BN, 8, 1]
    dd = tl.load(d_ptr + r3 * s_d + sb, mask=m3, other=0)                           # [BN, 1, 1]
    d = (dd & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    dmin = ((dd >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    # w = d (sc q - (dmin / d) m): the operand is sc q 2^-11 - (dmin / d) m 2^-11 and the dot's
    # sums are scaled by 2048 d; a block with d = 0 takes the operand -m 2^-11 and 2048 dmin
    dz = d == 0.0
    scale = tl.where(dz, dmin, d)
    r = tl.where(dz, 1.0, dmin / tl.where(dz, 1.0, d)) * -0.00048828125
    scf = (scm & 255).to(tl.float32)
    nb = ((scm >> 8) & 255).to(tl.float32) * r                                      # [BN, 8, 1]
    i4 = tl.arange(0, 4)[None, None, None, :]
    if ASM:
        # (2^122, 2^118) as a bf16 pair, 0 where d = 0
        c2 = tl.where(dz, 0, 0x7A807C80)
        s2 = tl.inline_asm_elementwise(_SCALE_PAIR, "=r,r,r", [scf, c2], dtype=tl.int32,
                                       is_pure=True, pack=1)
        nb2 = _bf16_pair(nb)
        sel = i4 | (4 << 4) | (i4 << 8) | (4 << 12)
        pairs = tl.inline_asm_elementwise(
            _Q4K_PAIR, "=r,r,r,r,r",
            [w[:, :, :, None], sel, s2[:, :, :, None], nb2[:, :, :, None]],
            dtype=tl.int32, is_pure=True, pack=1)                                   # [BN, 8, 4, 4]
        op = tl.reshape(_pairs_to_bf16(pairs), (BN, 256))
    else:
        b = (w[:, :, :, None] >> (8 * i4)) & 255                                    # bytes
        q = tl.join(b & 15, b >> 4)                                                 # [BN, 8, 4, 4, 2]
        scz = tl.where(dz, 0.0, scf)
        # the FMA's one rounding of sc q 2^-11 (exact) + the bias (a bf16): the float32 sum
        # rounded to odd (TwoSum error; an inexact even result moves one ulp toward it), then
        # to bf16, is that rounding (24 >= 10 + 2 bits)
        a = (q.to(tl.float32) * scz[:, :, :, None, None]) * 0.00048828125
        b = nb.to(tl.bfloat16).to(tl.float32)[:, :, :, None, None]
        v = _sum_to_odd(a, b)
        op = tl.reshape(v.to(tl.bfloat16), (BN, 256))
    return op, tl.reshape(scale, (BN,)) * 2048.0


@triton.jit
def _q6k_operand(qp, qh_ptr, sc_ptr, d_ptr, rows, rmask, s_q, s_qh, s_sc, s_d, sb,
                 ASM: tl.constexpr):
    """One super-block of BN weight rows -> (bf16 [BN, 256] operand, float32 [BN] its scale)."""
    BN: tl.constexpr = rows.shape[0]
    r3 = rows.to(tl.int64)[:, None, None]
    m3 = rmask[:, None, None]
    g3 = tl.arange(0, 16)[None, :, None]
    v3 = tl.arange(0, 2)[None, None, :]
    # words [BN, 16 groups, 2]: word v of group g holds the low nibbles of 16g + 8v .. + 7
    w = tl.load(qp + r3 * (s_q // 4) + sb * 32 + g3 * 2 + v3, mask=m3, other=0)
    h = tl.load(qh_ptr + r3 * s_qh + sb * 16 + g3, mask=m3, other=0)                # [BN, 16, 1]
    sc = tl.load(sc_ptr + r3 * s_sc + sb * 16 + g3, mask=m3, other=0).to(tl.int32)
    i4 = tl.arange(0, 4)[None, None, None, :]
    if ASM:
        scf = sc.to(tl.float32)
        s2 = tl.inline_asm_elementwise(_SCALE_PAIR, "=r,r,r", [scf, 0x7B807B80],   # 2^120
                                       dtype=tl.int32, is_pure=True, pack=1)
        nb2 = _bf16_pair(scf * -0.00390625)                                         # -32 sc 2^-13
        # element 8v + 2i + o has its high bits at 8i + 2(2v + o): shift the word so that the
        # pair's two fields sit at bits 4-5 and 6-7 of byte i
        hv = h << (4 - 4 * v3)                                                      # [BN, 16, 2]
        sel = i4 | ((i4 + 4) << 8)
        pairs = tl.inline_asm_elementwise(
            _Q6K_PAIR, "=r,r,r,r,r,r",
            [w[:, :, :, None], hv[:, :, :, None], sel, s2[:, :, :, None], nb2[:, :, :, None]],
            dtype=tl.int32, is_pure=True, pack=1)                                   # [BN, 16, 2, 4]
        op = tl.reshape(_pairs_to_bf16(pairs), (BN, 256))
    else:
        b = (w[:, :, :, None] >> (8 * i4)) & 255                                    # bytes
        hb = (h[:, :, :, None] >> (8 * i4 + 4 * v3[:, :, :, None])) & 15           # both fields
        lo = (b & 15) | ((hb & 3) << 4)
        hi = (b >> 4) | ((hb >> 2) << 4)
        q = tl.join(lo, hi) - 32                                                    # [BN, 16, 2, 4, 2]
        v = (q * sc[:, :, :, None, None]).to(tl.float32) * 0.0001220703125          # 2^-13, exact
        op = tl.reshape(v.to(tl.bfloat16), (BN, 256))
    d = tl.load(d_ptr + rows.to(tl.int64) * s_d + sb, mask=rmask, other=0.0).to(tl.float32)
    return op, d * 8192.0


@triton.jit
def _dot(x, op, UPCAST: tl.constexpr):
    """x [BM, 256] @ op [BN, 256]^T, float32 sums."""
    if UPCAST:
        return tl.dot(x.to(tl.float32), tl.trans(op.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(x, tl.trans(op))


@triton.jit
def _kq_gemm_kernel(
    x_ptr,                          # [T, K] bf16, row stride stride_x
    q_ptr, qh_ptr, sc_ptr, d_ptr,   # weight planes [N, *] (dequant.py)
    s_q, s_qh, s_sc, s_d,           # their row strides (elements)
    bias_ptr,                       # [N] (HAS_BIAS)
    out_ptr,                        # [T, N], row stride stride_o; SPLIT: [splits, T, N] float32
    T, N, NSB, stride_x, stride_o,
    SB_PER_SPLIT,                   # super-blocks per split (SPLIT only)
    TYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
    DOT_UPCAST: tl.constexpr,       # float32 dot (the CPU interpreter's bf16 dot is unreliable)
):
    pdl_launch(PDL)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < T
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    kk = tl.arange(0, 256)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_x + kk[None, :]
    qp = q_ptr.to(tl.pointer_type(tl.int32))
    if SPLIT:
        sb_lo = tl.program_id(2) * SB_PER_SPLIT
        sb_hi = tl.minimum(sb_lo + SB_PER_SPLIT, NSB)
    else:
        sb_lo = 0
        sb_hi = NSB
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    pdl_wait(PDL)   # x comes from the previous kernel
    for sb in range(sb_lo, sb_hi):
        x = tl.load(x_rows + sb * 256, mask=mmask[:, None], other=0.0)
        if TYPE == Q4_K:
            op, scale = _q4k_operand(qp, sc_ptr, d_ptr, rows, rmask, s_q, s_sc, s_d, sb, ASM)
        else:
            tl.static_assert(TYPE == Q6_K, "kgemm: Q4_K or Q6_K")
            op, scale = _q6k_operand(qp, qh_ptr, sc_ptr, d_ptr, rows, rmask, s_q, s_qh, s_sc,
                                     s_d, sb, ASM)
        acc += _dot(x, op, DOT_UPCAST) * scale[None, :]
    if SPLIT:
        out_ptr += tl.program_id(2).to(tl.int64) * T * N
    elif HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    optr = out_ptr + offs_m.to(tl.int64)[:, None] * stride_o + rows[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & rmask[None, :])


# ------------------------------------------------------------------------------------------------
# launcher

KQ_TYPES = ("Q4_K", "Q6_K")


def kq_default(ggml_type: int, T: int, N: int, K: int) -> dict:
    """Launcher default for "linear_kq": BLOCK_M covers T (16 / 32 / 64 rows: a batch-decode
    step streams the weight once), 64 weight rows per program, 4 warps (8 for 64 rows: 4 spill),
    3 stages."""
    bm = 16 if T <= 16 else 32 if T <= 32 else 64
    return {"BLOCK_M": bm, "BLOCK_N": 64, "SPLIT_K": 1, "num_warps": 8 if bm > 32 else 4,
            "num_stages": 3}


def linear(x: torch.Tensor, w: QTensor, bias: torch.Tensor | None, out: torch.Tensor,
           cfg: dict, asm: bool | None = None) -> torch.Tensor:
    """out [T, N] = x [T, K] (bf16, unit column stride) @ W^T (+ bias) for a Q4_K / Q6_K weight.

    cfg: a "linear_kq" config (kq_default's keys; SPLIT_K > 1 sums float32 partials with
    matmul's split-K reduce). asm: build the operands with PTX (default: on a CUDA device outside
    the interpreter); False computes the same operands, bit for bit, in plain Triton (the CPU
    interpreter, AMD)."""
    info = TYPES[int(w.ggml_type)]
    if info.name not in KQ_TYPES:
        raise ValueError(f"kgemm.linear: {info.name} is not one of {KQ_TYPES}")
    if x.dtype != torch.bfloat16 or x.stride(1) != 1:
        raise ValueError("kgemm.linear: x must be bfloat16 with unit column stride")
    T, K = x.shape
    N = w.rows
    if asm is None:
        asm = x.device.type == "cuda" and torch.version.hip is None and not _INTERPRET
    from forge.kernels.matmul import _reduce_splits, _split_k   # (matmul imports this module)

    planes = plane_args(w)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    nsb = K // QK_K
    split, per = _split_k(nsb, 1, cfg.get("SPLIT_K", 1))        # super-blocks per split
    dst = out if split == 1 else torch.empty((split, T, N), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(N, bn), triton.cdiv(T, bm), split)
    _kq_gemm_kernel[grid](
        x, *planes, bias if bias is not None else out, dst, T, N, nsb, x.stride(0),
        out.stride(0) if split == 1 else N, per,
        TYPE=w.ggml_type, BLOCK_M=bm, BLOCK_N=bn, HAS_BIAS=bias is not None and split == 1,
        SPLIT=split > 1, ASM=bool(asm), DOT_UPCAST=_INTERPRET, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **pdl.launch_args())
    if split > 1:
        _reduce_splits(dst, bias, out, split)
    return out


# ------------------------------------------------------------------------------------------------
# COMPILE_SPECS (NVIDIA only: the launcher takes this kernel on NVIDIA; the PTX operands)


def _compile_specs() -> list[dict]:
    specs = []
    for name in KQ_TYPES:
        tid = TYPE_IDS[name]
        for T, split in ((32, False), (16, True), (64, False)):
            cfg = kq_default(tid, T, 4096, 4096)
            sig = {"x_ptr": "*bf16", **plane_signature(tid), "s_q": "i32", "s_qh": "i32",
                   "s_sc": "i32", "s_d": "i32", "bias_ptr": "*bf16",
                   "out_ptr": "*fp32" if split else "*bf16", "T": "i32", "N": "i32",
                   "NSB": "i32", "stride_x": "i32", "stride_o": "i32", "SB_PER_SPLIT": "i32"}
            specs.append({
                "name": f"_kq_gemm_kernel[{name},bf16,T{T}{',split' if split else ''}]",
                "kernel": "linear_kq", "ggml_type": name,
                "bucket": tuning.bucket(T=T, N=4096, K=4096),
                "fn": _kq_gemm_kernel, "signature": sig,
                "constexprs": {"TYPE": tid, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                               "HAS_BIAS": not split, "SPLIT": split, "ASM": True, "PDL": True,
                               "DOT_UPCAST": False},
                "attrs": jit_attrs(_kq_gemm_kernel, sig, ("s_q", "s_qh", "s_sc", "s_d", "N",
                                                          "stride_x", "stride_o")),
                "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
                "vendors": ("nvidia",), "expect_mma": True,
            })
    return specs


COMPILE_SPECS: list[dict] = _compile_specs()
