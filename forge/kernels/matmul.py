"""linear: y = x @ W^T (+ bias) for weights in any supported GGML type, repacked by dequant.repack.

Paths, chosen by the number of tokens T, the weight type and the launch configs:
- decode (T <= MAX_T of the "linear_gemv" config): `_linear_gemv_kernel`, a fused dequant GEMV
  (see the notes above it). It streams the packed planes once and carries BLOCK_T (1 or 2)
  token rows per program; the decode is exact in float32 (~4-5 instructions per weight), or,
  with X_INT8 (the NVIDIA default for bf16/fp16 activations and 4/5/6/8-bit codes), x is
  quantized to int8 per chunk and the codes multiplied with dp4a (~2-3 per weight, llama.cpp's
  MMVQ numerics). PREFETCH (opt-in per config) loads the next step's weights during each decode.
- small T (up to DEQUANT_T of the "linear_gemm" config): `_linear_gemm_kernel`, a dequant GEMM on
  the matrix units (wgmma / mma / MFMA / WMMA through tl.dot): BLOCK_M x BLOCK_N x BLOCK_K
  tiles, the weight tile decoded to the activation dtype in registers, float32 accumulators,
  grouped program order for L2 reuse. Its BLOCK_M covers all T rows for batch decode (T = 3..64)
  so the weights stream once.
- large T (T >= DEQUANT_T, 0 = never; per type on NVIDIA, 0 on AMD; with DEQUANT_EAGER = 0, as on
  NVIDIA, only inside CUDA-graph capture, i.e. batch decode: eagerly the extra launches made
  prefill host-bound): dequantize the weight to the
  activation dtype into a scratch buffer reused across calls (one per device and dtype, grown as
  needed, at most SCRATCH_BYTES: larger weights go in row pieces) and call torch.matmul (cuBLAS
  / rocBLAS, ~2x the fused GEMM's throughput on Hopper).
- float weights past the GEMV range go straight to torch.matmul: in their own dtype (BF16
  weights with bf16 activations; F16 weights with the activations cast to float16 and a float32
  result, then cast back), F32 weights with float32 activations. Float32 activations (a
  debugging mode, and the output head's logits) with quantized weights take dequantize + matmul
  in float32: they never pass through a lower precision.

Activations may be float32, float16 or bfloat16; the result has x's dtype, accumulated in
float32.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from forge.kernels import env, gemv_async, kgemm, pdl, precompile, tuning, xquant
from forge.kernels.activation import KINDS as ACT_KINDS
from forge.kernels.activation import act_mul_fused, gated
from forge.kernels.norm import rms_norm
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
    jit_attrs,
    plane_args,
    plane_signature,
)
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.kernels.xquant import XQ_LANES, _xq_byte, _xq_inv_scale, _xq_word
from forge.runtime.backend import QTensor

ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_BLOCK_T = 2  # token rows one GEMV program carries
# Kernel arguments whose values the compiler must not see as constants (see the GEMV notes).
MAGIC = 0x4B000000  # the bits of 2^23 as a float32
# Triton's CPU interpreter multiplies bfloat16 dot operands as their raw uint16 bits; there the
# GEMM upcasts bf16 tiles to float32 first (exact: bf16 products are exact in float32).
_INTERPRET = env.interpreting()


def gemv_shape(ggml_type: int) -> tuple[int, int]:
    """(V, E) of the GEMV for a type: a thread's chunk of a weight row per step is V 32-bit
    words of the "q" plane (16 bytes; 8 for the 2-bit types), each holding E elements."""
    name = TYPES[int(ggml_type)].name
    if name in ("Q2_K", "Q3_K"):
        return 2, 16
    if name == "Q8_0":
        return 4, 4
    if name in ("F16", "BF16"):
        return 4, 2
    if name == "F32":
        return 4, 1
    return 4, 8


def gemv_block(ggml_type: int) -> int:
    """Columns one GEMV thread takes per step (a chunk, V x E elements): BLOCK_K = this x lanes x
    warps (autotune/spaces.py builds its linear_gemv candidates from it)."""
    V, E = gemv_shape(ggml_type)
    return V * E


def _lanes_mask(ggml_type: int) -> int:
    """The `lanes` argument: the low-bit lanes of a spread word (Q3_K: 2 of every 4 bits)."""
    return 0x33333333 if TYPES[int(ggml_type)].name == "Q3_K" else 0x0F0F0F0F


# ------------------------------------------------------------------------------------------------
# decode: fused dequant GEMV
#
# Tile of one step: [V, BLOCK_N, BB] 32-bit words = (word of a chunk, weight row, chunk). A chunk
# is the V words (16 bytes) of the "q" plane that one thread reads with one vector load per
# row; lanes and warps run along the chunk axis (BB = lanes x warps: one chunk per thread and
# step) and all BLOCK_N rows of a chunk sit in that thread's registers, so x is read and
# converted once per thread and step and reused for every row, every scale is decoded once per
# (row, sub-block), and no data crosses threads until the final reduction (no shared memory and
# no barrier in the loop). x comes as E tensors [V, 1, BB] (element j of every word), loaded as
# vectors of at most 16 bytes per word so that Triton gives them the weight tile's layout.
#
# Decoding, all in float32 and exact (the result equals x @ dequantize(W)^T up to the order of
# float32 additions):
# - a field of F bits that sits at bits P .. P+F-1 of a word (P + F <= 23) becomes a float
#   without shifting it down: bits = (word & (mask << P)) | 0x4B000000 is the float 2^23 + c 2^P,
#   so q = bits - (2^23 + offset 2^P) = (c - offset) 2^P exactly (one LOP3 and one FADD), and the
#   2^P goes into x instead (x_j 2^-P, once per thread and step, shared by all rows). A word's
#   fields need at most one shift (4-bit: w >> 12 for fields 4..7), so decoding costs about one
#   integer and two float instructions per weight, FADD + FFMA included.
# - Q5_* / Q6_K / Q3_K keep their high bits in "qh" words whose slot order (dequant.py) lets one
#   shift per word move the high bits of 4 (8) elements next to their low bits: the low nibbles
#   of a word are spread to the bytes of two words (even / odd elements) with the high bits
#   merged by one select (bits of the nibble word where `lanes` is set, else of the shifted qh
#   word; the garbage above the field is masked by the field extraction).
# - the sub-block scale is applied once per (row, chunk): per-word partial dots are summed and
#   multiplied by s (and the min term uses the chunk's sum of x).
# - `magic`, `lanes` and `zero` are kernel arguments so that LLVM cannot fold them into
#   neighbouring shifts and masks (it would otherwise rewrite the LOP3-friendly forms into
#   bit-field extracts and split the select). `zero` also anchors an OR-reduction of every
#   weight word of the step into the decode (magic | (dep & zero)): every decode then waits for
#   every load, so ptxas issues all of the step's loads up front instead of interleaving them
#   with arithmetic to save registers (one memory round trip per step, not one per row).
# Registers: ~2 per weight row word and 32 for x per token row; the launcher's BLOCK_N keeps a
# program at <= ~128 registers (4 programs of 4 warps per SM on Hopper) with 64-128 bytes of
# loads per thread in flight.
#
# Prefetch (PREFETCH, opt-in per config; 0 = the loop above, unchanged). Each step waits one
# memory round trip and then decodes with no load in flight, so small programs measure best
# (latency-bound). With PREFETCH, step i + 1's weight loads (w and the small planes) are issued
# before step i's decode and carried into the next iteration in registers: one step of weights
# is always in flight. The last step is peeled off the loop, so no prefetch reaches past the
# program's chunks (no masks, whose zero fills cost a MOV per register and step, no re-read of
# a clamped step, every address in bounds; the decode is compiled twice). The anchor of step i
# ORs step i's words only (loaded an iteration before), so no decode waits for a prefetch. x
# stays a load of its own step (small, L1/L2-resident), and it keeps the order below.
# ptxas places a load whose value is first used in the next iteration by register pressure:
# left alone (PREFETCH = 2) it sinks the prefetch into the decode (sm90 Q4_K: after 24 of the
# step's 32 dp4a). PREFETCH = 1 adds a fence: a store that never runs (mask zero != 0) between
# the prefetch and the step's x loads. ptxas must keep loads of memory that may alias on their
# side of a store, and every decode waits for x, so every prefetch load issues before any of the
# step's dp4a / float work (sm90 SASS, every type and path; on AMD the store becomes a branch,
# which the scheduler does not cross either). Cost: both steps' words are live at once (Q4_K
# 80 -> 126 registers, Q8_0 56 -> 80 at the sm90 configs for 14336 x 4096; unfenced 96 / 64).
# PREFETCH 3 (unfenced) / 4 (fenced) run two steps per loop iteration. In the one-step loop the
# prefetched words become the next iteration's words through a register copy at the loop's end,
# and a copy waits for its load: Nsight Compute's stall sampling of the sm90 Q4_K 4096 x 14336
# GEMV (PREFETCH 2, run 16) puts 41% of its samples on those MOVs. With two steps per iteration
# the second step's words are loaded into the registers the first step's decode freed, so
# nothing is copied (an odd step before the last one is peeled off). Measured (H100, run 16),
# the stall moves rather than goes: Q4_K 4096 x 14336 14.46 us at PREFETCH 2, 14.62 at 3, 15.28
# at 4 (34 and 40 registers, both allocated as 40: 48 of 64 warps per SM, against 64 at 32);
# faster only on a few shapes (Q6_K 4096 x 4096 7.23 -> 6.78 us, the F16 head 344 -> 337 us).
# No shipped entry sets them.
#
# L2 prefetch (L2PF, opt-in per config, NVIDIA only; 0 = off, the code unchanged). Each thread
# issues prefetch.global.L2 for its chunks' addresses in every plane of the step L2PF steps
# ahead, and for the first L2PF steps at the program's start, before the PDL wait (the weights
# are constant): weight bytes in flight from DRAM to L2 that hold no register, where the loads
# above are bounded by the registers they land in. With PREFETCH, step c0 + BB is loaded into
# registers right after the L2 prefetch of step c0 + L2PF * BB: the L2 lead is L2PF - 1 steps
# (L2PF 1 prefetches what the register prefetch then loads). Measured (H100,
# bench/bench_gemv_floor.py, run 15) in a stream of GEMVs at the 8B shapes, 1-2 steps ahead:
# from 3% faster (Q8_0 4096x4096 7.62 -> 7.37 us, Q4_K 14336x4096 14.19 -> 13.85 us) to 16%
# slower (F16 4096x14336); 4 steps and more up to 1.6x slower. In the 8B Q8_0 model, L2PF 2 on
# the o projection made decode slower (303.2 -> 299.7 tok/s). No shipped entry sets it; the
# sweep takes it as an axis (--gemv-l2pf).
#
# Fused prologue and epilogues (NORM, ACT, RESID; `linear`'s norm= / act= / residual=; off in
# every unfused launch, whose code they leave as it was). rms_norm prologue (NORM): the norm's
# 1 / sqrt(mean(x^2) + eps) is one factor of the whole dot product, so each program multiplies
# x by the norm weights as it loads it (one multiply per x element, shared by all rows), sums
# x^2 per thread alongside ([V, 1, BB], reduced once at the end), and scales its sums in the
# epilogue: the normed x is never stored or rounded. Every program redoes this for its K range,
# which costs registers (sm90 F16 BLOCK_N 2: 32 -> 40, fewer programs per SM) where the plain
# GEMV is already at the copy rate: the config key FUSE_NORM turns it off per shape. ACT: the
# weight is [gate; up]; program rows come in (gate n, up n) pairs, split in the epilogue into
# act(gate) * up (activation.gated). RESID: the epilogue adds res[t, cols] before the store.


@triton.constexpr_function
def _gv_field(TYPE, J):
    """(source word index, field mask (unshifted), bit position P, code offset) of field J."""
    t = int(TYPE)
    if t in (2, 3, 12):                          # Q4_0 Q4_1 Q4_K: w (fields 0-3), w >> 12
        return (J // 4, 15, 4 * (J % 4) + 4 * (J // 4), 8 if t == 2 else 0)
    if t == 8:                                   # Q8_0: w (bytes 0, 1), w >> 9 (bytes 2, 3)
        return (J // 2, 255, (0, 8, 7, 15)[J], 128)
    if t in (6, 7, 13, 14):                      # Q5_*, Q6_K: e, o, e >> 8, o >> 8 (byte lanes)
        i, o = J // 2, J % 2
        return (o + 2 * (i // 3), 63 if t == 14 else 31, 8 * i if i < 3 else 16,
                32 if t == 14 else 16 if t == 6 else 0)
    if t == 10:                                  # Q2_K: w (fields 0-10), w >> 10
        return (0 if J <= 10 else 1, 3, 2 * J if J <= 10 else 2 * J - 10, 0)
    if t == 11:                                  # Q3_K: e, o, e >> 8, o >> 8 (nibble lanes)
        i, o = J // 2, J % 2
        return (o + 2 * (i // 6), 7, 4 * i if i < 6 else 4 * i - 8, 4)
    raise ValueError(f"no GEMV fields for GGML type {t}")


@triton.constexpr_function
def _gv_fsrc(TYPE, J):
    return _gv_field(TYPE, J)[0]


@triton.constexpr_function
def _gv_fmask(TYPE, J):
    f = _gv_field(TYPE, J)
    return f[1] << f[2]


@triton.constexpr_function
def _gv_fbias(TYPE, J):
    """2^23 + offset * 2^P: what q = bits - bias subtracts."""
    f = _gv_field(TYPE, J)
    return 8388608.0 + f[3] * float(1 << f[2])


@triton.constexpr_function
def _gv_fscale(TYPE, J):
    """2^-P: the factor x takes for field J."""
    if int(TYPE) in (0, 1, 30):
        return 1.0
    return 1.0 / float(1 << _gv_field(TYPE, J)[2])


@triton.jit
def _split2(x):
    a, b = tl.split(x)
    return (a, b)


@triton.jit
def _split4(x):
    """[..., 4] -> (x[..., 0], x[..., 1], x[..., 2], x[..., 3])"""
    a, b = tl.split(tl.reshape(x, x.shape[:-1] + (2, 2)))       # even / odd
    a0, a1 = tl.split(a)
    b0, b1 = tl.split(b)
    return (a0, b0, a1, b1)


@triton.jit
def _split8(x):
    a, b = tl.split(tl.reshape(x, x.shape[:-1] + (4, 2)))       # even / odd
    a0, a1, a2, a3 = _split4(a)
    b0, b1, b2, b3 = _split4(b)
    return (a0, b0, a1, b1, a2, b2, a3, b3)


@triton.jit
def _splitn(x, P: tl.constexpr):
    """[..., P] -> a tuple of P tensors [...] (element j of the last axis)."""
    if P == 1:
        r = (tl.reshape(x, x.shape[:-1]),)
    elif P == 2:
        r = _split2(x)
    elif P == 4:
        r = _split4(x)
    else:
        tl.static_assert(P == 8, "pieces are 1, 2, 4 or 8 elements")
        r = _split8(x)
    return r


@triton.jit
def _gv_xpiece(row, K, c0, c_end, H: tl.constexpr, V: tl.constexpr, E: tl.constexpr,
               BB: tl.constexpr, EVEN: tl.constexpr, X_PAIRS: tl.constexpr):
    """Piece H (16 bytes or less) of every word's x: fields H*P .. H*P + P - 1 as a tuple of
    float32 tensors [V, 1, BB]. Element j of word v of chunk c is x[(c * V + v) * E + j].
    X_PAIRS: bf16 x whose rows start 4-byte aligned, read as uint32 pairs (cheaper to widen)."""
    c4 = c0 + tl.arange(0, BB)[None, None, :, None]
    v4 = tl.arange(0, V)[:, None, None, None]
    if X_PAIRS and E >= 2:
        # bf16 pairs as one uint32: even element = bits << 16, odd element = bits & 0xFFFF0000
        P: tl.constexpr = min(E, 8)
        u_ptr = row.to(tl.pointer_type(tl.uint32))
        off = ((c4 * V + v4) * E + H * P) // 2 + tl.arange(0, P // 2)[None, None, None, :]
        if EVEN:
            u = tl.load(u_ptr + off)
        else:
            u = tl.load(u_ptr + off, mask=(c4 < c_end) & (off * 2 < K), other=0)
            u = tl.where(off * 2 + 1 < K, u, u & 0xFFFF)    # a pair straddling the row end
        lo = _splitn((u << 16).to(tl.float32, bitcast=True), P // 2)
        hi = _splitn((u & 0xFFFF0000).to(tl.float32, bitcast=True), P // 2)
        if P == 2:
            xs = (lo[0], hi[0])
        elif P == 4:
            xs = (lo[0], hi[0], lo[1], hi[1])
        else:
            xs = (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], lo[3], hi[3])
    else:
        P: tl.constexpr = min(E, 128 // row.dtype.element_ty.primitive_bitwidth)
        off = (c4 * V + v4) * E + H * P + tl.arange(0, P)[None, None, None, :]
        if EVEN:
            xv = tl.load(row + off)
        else:
            xv = tl.load(row + off, mask=(c4 < c_end) & (off < K), other=0.0)
        xs = _splitn(xv.to(tl.float32), P)
    return xs


@triton.jit
def _gv_x(x_ptr, t, K, stride_x, c0, c_end, V: tl.constexpr, E: tl.constexpr,
          BB: tl.constexpr, EVEN: tl.constexpr, X_PAIRS: tl.constexpr):
    """Token row t's x for chunks c0 .. c0 + BB - 1 as a tuple of E float32 tensors [V, 1, BB]
    (field j of every word), loaded in pieces of at most 16 bytes per word: a wider row would
    be spread over two threads (a layout conversion through shared memory every step)."""
    row = x_ptr + t.to(tl.int64) * stride_x
    ES: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
    NP: tl.constexpr = max(1, E * ES // 16)
    a = _gv_xpiece(row, K, c0, c_end, 0, V, E, BB, EVEN, X_PAIRS)
    if NP == 1:
        xs = a
    elif NP == 2:
        b = _gv_xpiece(row, K, c0, c_end, 1, V, E, BB, EVEN, X_PAIRS)
        if E == 8:
            xs = (a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3])
        else:
            xs = (a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7])
    else:
        tl.static_assert(NP == 4, "x is read in 1, 2 or 4 pieces per word")
        b = _gv_xpiece(row, K, c0, c_end, 1, V, E, BB, EVEN, X_PAIRS)
        c = _gv_xpiece(row, K, c0, c_end, 2, V, E, BB, EVEN, X_PAIRS)
        d = _gv_xpiece(row, K, c0, c_end, 3, V, E, BB, EVEN, X_PAIRS)
        xs = (a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3],
              c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3])
    return xs


@triton.jit
def _gv_small(qh_ptr, sc_ptr, d_ptr, s_qh, s_sc, s_d, r3, cb, TYPE: tl.constexpr,
              V: tl.constexpr):
    """The per-chunk planes of one step for chunks cb [1, 1, BB] (already in range):
    (h: the qh words, sc: the sub-block scales, d: the block scales), 0 where the type has none.
    A plane read with one element per chunk would be vectorized across chunks (across lanes)
    by Triton's coalescer, unlike the weight tile: `_noncontig` hides that contiguity."""
    v3 = tl.arange(0, V)[:, None, None]
    h = 0
    sc = 0
    d = 0
    if TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q3_K:   # a word per chunk
        h = tl.load(qh_ptr + r3 * s_qh + _noncontig(cb))
    if TYPE == Q6_K:                                                      # a word per 2 words
        h = tl.load(qh_ptr + r3 * s_qh + cb * 2 + v3 // 2)
    if TYPE == Q8_0:                                                      # a d per 2 chunks
        d = tl.load(d_ptr + r3 * s_d + cb // 2)
    elif TYPE == Q4_0 or TYPE == Q5_0 or TYPE == Q4_1 or TYPE == Q5_1:    # a d per chunk
        d = tl.load(d_ptr + r3 * s_d + _noncontig(cb))
    elif TYPE == Q4_K or TYPE == Q5_K:                                    # sc per chunk
        sc = tl.load(sc_ptr + r3 * s_sc + _noncontig(cb))
        d = tl.load(d_ptr + r3 * s_d + cb // 8)
    elif TYPE == Q6_K:                                                    # sc per 2 words
        sc = tl.load(sc_ptr + r3 * s_sc + cb * 2 + v3 // 2)
        d = tl.load(d_ptr + r3 * s_d + cb // 8)
    elif TYPE == Q3_K or TYPE == Q2_K:                                    # sc per word
        sc = tl.load(sc_ptr + r3 * s_sc + cb * 2 + v3)
        d = tl.load(d_ptr + r3 * s_d + cb // 8)
    return h, sc, d


@triton.jit
def _noncontig(i):
    """i, but opaque to Triton's contiguity analysis (see `_gv_small`)."""
    return (i * 2) // 2


@triton.jit
def _bits32(v):
    """The bits of an integer or float tensor as uint32 (zero-extended)."""
    if v.dtype == tl.float16:
        v = v.to(tl.uint16, bitcast=True)
    if v.dtype == tl.float32:
        v = v.to(tl.uint32, bitcast=True)
    if v.dtype.primitive_bitwidth == 16:
        v = v.to(tl.uint16, bitcast=True).to(tl.uint32)
    if v.dtype.primitive_bitwidth == 8:
        v = v.to(tl.uint8, bitcast=True).to(tl.uint32)
    return v.to(tl.uint32, bitcast=True)


@triton.jit
def _or_all(v):
    """A value depending on every element, over the word and row axes: [A, B, BB] -> uint32
    [1, 1, BB] (a max: a builtin reduction, fast under the CPU interpreter too)."""
    u = _bits32(v)
    return tl.max(tl.max(u, axis=0, keep_dims=True), axis=1, keep_dims=True)


@triton.jit
def _gv_dep(w, h, sc, d, zero, TYPE: tl.constexpr):
    """0, computed from every word the step loaded (see the GEMV notes) -> uint32 [1, 1, BB]."""
    dep = _or_all(w)
    if TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q3_K or TYPE == Q6_K:
        dep = dep | _or_all(h)
    if TYPE == Q2_K or TYPE == Q3_K or TYPE == Q4_K or TYPE == Q5_K or TYPE == Q6_K:
        dep = dep | _or_all(sc)
    if TYPE != F32 and TYPE != F16 and TYPE != BF16:
        dep = dep | _or_all(d)
    return dep & zero


@triton.jit
def _select(a, b, m):
    """The bits of a where m is set, else those of b (one LOP3)."""
    return (a & m) | (b & ~m)


@triton.jit
def _shl_r(h, s):
    """h << s for s >= 0, h >> -s otherwise (s a compile-time constant per element)."""
    left = h << tl.maximum(s, 0).to(tl.uint32)
    return tl.where(s >= 0, left, h >> tl.maximum(-s, 0).to(tl.uint32))


@triton.jit
def _gv_sources(w, h, lanes, TYPE: tl.constexpr, V: tl.constexpr):
    """The words the fields of a step are cut from (uint32 [V, BN, BB] each)."""
    if TYPE == Q4_0 or TYPE == Q4_1 or TYPE == Q4_K:
        src = (w, w >> 12)
    elif TYPE == Q8_0:
        src = (w, w >> 9)
    elif TYPE == Q2_K:
        src = (w, w >> 10)
    elif TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q6_K:
        v = tl.arange(0, V)[:, None, None]
        hu = h.to(tl.uint32, bitcast=True)
        if TYPE == Q6_K:   # element 8v' + 2i + o (v' = v % 2) at bits 8i + 2(2v' + o) of h
            odd = (v % 2) == 1
            he = tl.where(odd, hu, hu << 4)            # -> bits 8i + 4, 5
            ho = tl.where(odd, hu >> 2, hu << 2)
        else:              # element 8v + 2i + o at bit 8i + 2v + o of h
            he = _shl_r(hu, 4 - 2 * v)                 # -> bit 8i + 4
            ho = _shl_r(hu, 3 - 2 * v)
        e = _select(w, he, lanes)                      # byte i: element 2i (low nibble + high)
        o = _select(w >> 4, ho, lanes)                 # byte i: element 2i + 1
        src = (e, o, e >> 8, o >> 8)
    else:
        tl.static_assert(TYPE == Q3_K, "unsupported GGML type")
        v = tl.arange(0, V)[:, None, None]
        hu = h.to(tl.uint32, bitcast=True)
        he = _shl_r(hu, 2 - 2 * v)                     # element 16v + 2i + o at bit 4i + 2v + o
        ho = _shl_r(hu, 1 - 2 * v)                     # -> bit 4i + 2
        e = _select(w, he, lanes)                      # nibble i: element 2i (2 low + 1 high)
        o = _select(w >> 2, ho, lanes)                 # nibble i: element 2i + 1
        src = (e, o, e >> 8, o >> 8)
    return src


@triton.jit
def _gv_q(w, src, mg, TYPE: tl.constexpr, J: tl.constexpr):
    """Field J of every word as float32 [V, BN, BB]: (code - offset) * 2^P (exact), or the
    weight value itself for float types."""
    if TYPE == F32:
        q = w
    elif TYPE == BF16:
        if J == 0:
            q = (w << 16).to(tl.float32, bitcast=True)
        else:
            q = (w & 0xFFFF0000).to(tl.float32, bitcast=True)
    elif TYPE == F16:
        if J == 0:
            q = (w & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            q = (w >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        bits = (src[_gv_fsrc(TYPE, J)] & _gv_fmask(TYPE, J)) | mg
        q = bits.to(tl.float32, bitcast=True) - _gv_fbias(TYPE, J)
    return q


@triton.jit
def _gv_parts(w, src, mg, xa, xb, TYPE: tl.constexpr, E: tl.constexpr, BLOCK_T: tl.constexpr):
    """Per-word partial dots [V, BN, BB] of token rows a and b (b only with BLOCK_T = 2)."""
    q = _gv_q(w, src, mg, TYPE, 0)
    pa = q * (xa[0] * _gv_fscale(TYPE, 0))
    pb = pa
    if BLOCK_T == 2:
        pb = q * (xb[0] * _gv_fscale(TYPE, 0))
    for j in tl.static_range(1, E):
        q = _gv_q(w, src, mg, TYPE, j)
        pa += q * (xa[j] * _gv_fscale(TYPE, j))
        if BLOCK_T == 2:
            pb += q * (xb[j] * _gv_fscale(TYPE, j))
    return pa, pb


@triton.jit
def _xsum(xs, E: tl.constexpr):
    s = xs[0]
    for j in tl.static_range(1, E):
        s += xs[j]
    return s


@triton.jit
def _gv_apply(acc, part, xs, sc, d, TYPE: tl.constexpr, E: tl.constexpr):
    """acc [1, BN, BB] += the step's contribution: the partial dots scaled per sub-block."""
    if TYPE == F16 or TYPE == BF16 or TYPE == F32:
        acc += tl.sum(part, axis=0, keep_dims=True)
    elif TYPE == Q8_0 or TYPE == Q4_0 or TYPE == Q5_0:
        acc += d.to(tl.float32) * tl.sum(part, axis=0, keep_dims=True)
    elif TYPE == Q4_1 or TYPE == Q5_1:
        dd, m = _f16_pair(d)
        xsum = tl.sum(_xsum(xs, E), axis=0, keep_dims=True)
        acc += dd * tl.sum(part, axis=0, keep_dims=True) + m * xsum
    elif TYPE == Q4_K or TYPE == Q5_K:
        dd, dmin = _f16_pair(d)
        xsum = tl.sum(_xsum(xs, E), axis=0, keep_dims=True)
        acc += (dd * (sc & 255).to(tl.float32)) * tl.sum(part, axis=0, keep_dims=True) \
            - (dmin * (sc >> 8).to(tl.float32)) * xsum
    elif TYPE == Q6_K or TYPE == Q3_K:   # a sub-block scale per word pair (Q6_K) or word (Q3_K)
        acc += d.to(tl.float32) * tl.sum(part * sc.to(tl.float32), axis=0, keep_dims=True)
    else:                                # Q2_K: scale and min per word
        dd, dmin = _f16_pair(d)
        acc += tl.sum(part * (dd * (sc & 15).to(tl.float32))
                      - (dmin * (sc >> 4).to(tl.float32)) * _xsum(xs, E), axis=0, keep_dims=True)
    return acc


# --- int8 activations (X_INT8, NVIDIA): x quantized per chunk, dp4a on the raw codes ---------
#
# With bf16/fp16 activations on NVIDIA, x can instead be quantized per thread chunk to int8
# (scale = max|x| / 127, round to nearest: llama.cpp's MMVQ does the same with its q8_1 blocks),
# and the codes, unpacked to byte lanes with one mask per 4 weights, multiplied with dp4a (four
# byte products and the accumulation in one instruction): ~0.6 instead of ~3 instructions per
# weight. The sub-block scale, the x scale and the code offset are applied once per (row,
# chunk) to the integer dot, the min term uses the sum of the quantized x. Error: x rounded to
# 8 bits relative to its chunk maximum (~0.5% relative on a dot product of random data); the
# result is no longer exact, so float32 activations never take this path.


@triton.jit
def _dp4a(a, b, c, ASM: tl.constexpr):
    """c + sum over the 4 bytes i of a.byte_i (unsigned) * b.byte_i (signed), int32.
    ASM: PTX dp4a; otherwise (the CPU interpreter) the same in integer arithmetic."""
    if ASM:
        r = tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r",
                                      [a.to(tl.int32, bitcast=True), b.to(tl.int32, bitcast=True),
                                       c], dtype=tl.int32, is_pure=True, pack=1)
    else:
        r = c
        for i in tl.static_range(4):
            ab = ((a >> (8 * i)) & 0xFF).to(tl.int32)
            bb = (b << (24 - 8 * i)).to(tl.int32, bitcast=True) >> 24     # sign-extended byte
            r += ab * bb
    return r


@triton.jit
def _anchor(xs, depf, E: tl.constexpr):
    """xs with +0.0 (depf, from the dependency anchor) added to its first field."""
    if E == 4:
        r = (xs[0] + depf, xs[1], xs[2], xs[3])
    else:
        r = (xs[0] + depf, xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7])
    return r


@triton.jit
def _gv_xq(xs, E: tl.constexpr):
    """Quantize the chunk of x (E float32 tensors [V, 1, BB]) to int8 with one scale per chunk.
    Returns (packed: a tuple of uint32 words [V, 1, BB] of 4 signed bytes each, matching the
    byte lanes of the codes: E = 8 -> (elements 0 2 4 6, elements 1 3 5 7), E = 4 -> (0 1 2 3),
    sums: int32 [V, 1, BB] the sum of each word's quantized values, scale: [1, 1, BB])."""
    amax = tl.abs(xs[0])
    for j in tl.static_range(1, E):
        amax = tl.maximum(amax, tl.abs(xs[j]))
    inv, scale = _xq_inv_scale(tl.max(amax, axis=0, keep_dims=True))
    t0 = _xq_byte(xs[0], inv)
    t1 = _xq_byte(xs[1], inv)
    t2 = _xq_byte(xs[2], inv)
    t3 = _xq_byte(xs[3], inv)
    # 0x4B400000 is the bits of 1.5 * 2^23: t - that = n (mod 2^32); 4 of them: 0x2D000000
    sums = ((t0 + t1 + t2 + t3) - 0x2D000000).to(tl.int32, bitcast=True)
    if E == 4:
        packed = ((t0 & 0xFF) | ((t1 & 0xFF) << 8) | ((t2 & 0xFF) << 16) | (t3 << 24),)
    else:
        tl.static_assert(E == 8, "int8 activations pair with 4- and 8-bit codes")
        t4 = _xq_byte(xs[4], inv)
        t5 = _xq_byte(xs[5], inv)
        t6 = _xq_byte(xs[6], inv)
        t7 = _xq_byte(xs[7], inv)
        sums += ((t4 + t5 + t6 + t7) - 0x2D000000).to(tl.int32, bitcast=True)
        packed = ((t0 & 0xFF) | ((t2 & 0xFF) << 8) | ((t4 & 0xFF) << 16) | (t6 << 24),
                  (t1 & 0xFF) | ((t3 & 0xFF) << 8) | ((t5 & 0xFF) << 16) | (t7 << 24))
    return packed, sums, scale


@triton.jit
def _gv_ipart(w, h, lanes, xq, TYPE: tl.constexpr, V: tl.constexpr, ASM: tl.constexpr):
    """Per-word integer dots [V, BN, BB] of the unsigned codes (no offset) with xq."""
    if TYPE == Q8_0:                    # bytes are the codes + 128
        p = _dp4a(w, xq[0], 0, ASM)
    elif TYPE == Q4_0 or TYPE == Q4_1 or TYPE == Q4_K:
        p = _dp4a(w & 0x0F0F0F0F, xq[0], 0, ASM)
        p = _dp4a((w >> 4) & 0x0F0F0F0F, xq[1], p, ASM)
    else:
        tl.static_assert(TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q6_K,
                         "no int8 path for this type")
        src = _gv_sources(w, h, lanes, TYPE, V)
        FM: tl.constexpr = 0x3F3F3F3F if TYPE == Q6_K else 0x1F1F1F1F
        p = _dp4a(src[0] & FM, xq[0], 0, ASM)
        p = _dp4a(src[1] & FM, xq[1], p, ASM)
    return p


@triton.jit
def _gv_apply_q(acc, p, xqs, xsc, xs, sc, d, TYPE: tl.constexpr, E: tl.constexpr):
    """acc [1, BN, BB] += the step's contribution from the integer dots p [V, BN, BB] (codes
    without offset), the per-word sums of xq xqs [V, 1, BB] and the x scale xsc [1, 1, BB]."""
    if TYPE == Q6_K:   # a sub-block scale per word pair, code offset 32
        dot = tl.sum((p - 32 * xqs) * sc.to(tl.int32), axis=0, keep_dims=True)
        acc += dot.to(tl.float32) * (xsc * d.to(tl.float32))
    else:
        dot = tl.sum(p, axis=0, keep_dims=True)
        if TYPE == Q8_0 or TYPE == Q4_0 or TYPE == Q5_0:
            OFF: tl.constexpr = 128 if TYPE == Q8_0 else 8 if TYPE == Q4_0 else 16
            dot = dot - OFF * tl.sum(xqs, axis=0, keep_dims=True)
            acc += dot.to(tl.float32) * (xsc * d.to(tl.float32))
        else:
            # the min term with the sum of the *quantized* x (as llama.cpp's q8_1 does): the
            # rounding of x then enters both terms alike, as an error of the centred weights
            xsum = tl.sum(xqs, axis=0, keep_dims=True).to(tl.float32) * xsc
            if TYPE == Q4_1 or TYPE == Q5_1:
                dd, m = _f16_pair(d)
                acc += dot.to(tl.float32) * (xsc * dd) + m * xsum
            else:          # Q4_K, Q5_K
                dd, dmin = _f16_pair(d)
                acc += dot.to(tl.float32) * (xsc * (dd * (sc & 255).to(tl.float32))) \
                    - (dmin * (sc >> 8).to(tl.float32)) * xsum
    return acc


@triton.jit
def _gv_store(acc, ss, t, T, rows, cols, bias_ptr, out_ptr, res_ptr, stride_o, stride_r, pid_k,
              N, K, eps, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, NORM: tl.constexpr,
              RESID: tl.constexpr, ACT: tl.constexpr):
    """Token row t's outputs: cols [BN] (ACT: [BN / 2]) of out, from the weight rows `rows`.
    NORM: times 1 / sqrt(mean(x^2) + eps) (ss: x's squares, summed per thread). ACT: rows hold
    (gate, up) pairs, out = act(gate) * up. RESID: plus res [t, cols]."""
    y = tl.sum(tl.reshape(acc, (acc.shape[1], acc.shape[2])), axis=1)   # [BN]
    m = (cols < N) & ((cols * 0 + t) < T)
    if SPLIT:
        # partials [SPLIT_K, T, N] float32
        tl.store(out_ptr + (pid_k.to(tl.int64) * T + t) * N + rows, y, mask=m)
    else:
        if NORM:
            y = y * (1.0 / tl.sqrt(tl.sum(ss) / K + eps))
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=(rows < N) | (ACT != 0), other=0.0).to(tl.float32)
        if ACT:
            g, u = tl.split(tl.reshape(y, (y.shape[0] // 2, 2)))
            y = gated(g, u, ACT == 2)
        if RESID:
            y += tl.load(res_ptr + t.to(tl.int64) * stride_r + cols, mask=m,
                         other=0.0).to(tl.float32)
        tl.store(out_ptr + t.to(tl.int64) * stride_o + cols, y.to(out_ptr.dtype.element_ty),
                 mask=m)


@triton.jit
def _gv_qwords(q_ptr, s_q, r3, c0, c_end, V: tl.constexpr, BB: tl.constexpr,
               EVEN: tl.constexpr):
    """The "q" plane's words of the step at chunk c0 (< c_end), w [V, BN, BB] as stored (0 past
    c_end), and each chunk's index clamped to a real chunk (where its scales are read; its x
    reads as 0)."""
    cb = c0 + tl.arange(0, BB)[None, None, :]
    woff = r3 * s_q + cb * V + tl.arange(0, V)[:, None, None]
    if EVEN:
        w = tl.load(q_ptr + woff)
        cs = cb
    else:
        w = tl.load(q_ptr + woff, mask=cb < c_end, other=0)
        cs = tl.minimum(cb, c_end - 1)
    return w, cs


@triton.jit
def _gv_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end,
              TYPE: tl.constexpr, V: tl.constexpr, BB: tl.constexpr, EVEN: tl.constexpr):
    """The weight loads of the step at chunk c0 (< c_end): w [V, BN, BB] and the small planes
    (h, sc, d: `_gv_small`)."""
    w, cs = _gv_qwords(q_ptr, s_q, r3, c0, c_end, V, BB, EVEN)
    if TYPE != F32:
        w = w.to(tl.uint32, bitcast=True)
    h, sc, d = _gv_small(qh_ptr, sc_ptr, d_ptr, s_qh, s_sc, s_d, r3, cs, TYPE, V)
    return w, h, sc, d


@triton.jit
def _gv_xpre(xq_ptr, xs_ptr, t, stride_xq, stride_xs, c0, c_end, V: tl.constexpr,
             E: tl.constexpr, BB: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr):
    """Token row t's pre-quantized x (X_PRE: xquant.py's layout) for chunks c0 .. c0 + BB - 1, in
    the form `_gv_xq` returns: (packed words, per-word sums of the codes, chunk scales).
    The sums come from dp4a against 0x01010101 (exact). Chunks past c_end read as 0."""
    cb = c0 + tl.arange(0, BB)[None, None, :]
    v3 = tl.arange(0, V)[:, None, None]
    row = xq_ptr + t.to(tl.int64) * stride_xq
    srow = xs_ptr + t.to(tl.int64) * stride_xs
    if E == 8:      # (even-element word, odd-element word) per x word: `_xq_word`
        off = _xq_word(cb, v3, V)
        if EVEN:
            ev = tl.load(row + off)
            od = tl.load(row + off + XQ_LANES * V)
        else:
            ev = tl.load(row + off, mask=cb < c_end, other=0)
            od = tl.load(row + off + XQ_LANES * V, mask=cb < c_end, other=0)
        ev = ev.to(tl.uint32, bitcast=True)
        od = od.to(tl.uint32, bitcast=True)
        ones = ev * 0 + 0x01010101
        packed = (ev, od)
        sums = _dp4a(ones, od, _dp4a(ones, ev, 0, ASM), ASM)
    else:
        tl.static_assert(E == 4, "pre-quantized x pairs with 4- and 8-bit codes")
        if EVEN:
            u = tl.load(row + cb * V + v3)
        else:
            u = tl.load(row + cb * V + v3, mask=cb < c_end, other=0)
        u = u.to(tl.uint32, bitcast=True)
        packed = (u,)
        sums = _dp4a(u * 0 + 0x01010101, u, 0, ASM)
    if EVEN:
        scale = tl.load(srow + cb)
    else:
        scale = tl.load(srow + cb, mask=cb < c_end, other=0.0)
    return packed, sums, scale


@triton.jit
def _l2_prefetch(ptrs):
    """prefetch.global.L2 of every address in ptrs (NVIDIA): the line comes into L2 with no
    register written and nothing waiting for it."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _gv_l2pf(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end,
             TYPE: tl.constexpr, V: tl.constexpr, BB: tl.constexpr):
    """L2 prefetch of the step at chunk c0 (< c_end): every plane's address of each chunk, the
    first word of a chunk's q words (16 bytes, 8 of them for the 2-bit types, within one
    sector) standing for all of them. Chunks past c_end prefetch the last one again."""
    cb = tl.minimum(c0 + tl.arange(0, BB)[None, None, :], c_end - 1)
    _l2_prefetch(q_ptr + r3 * s_q + cb * V)
    if TYPE == Q5_0 or TYPE == Q5_1 or TYPE == Q5_K or TYPE == Q3_K:
        _l2_prefetch(qh_ptr + r3 * s_qh + cb)
    if TYPE == Q6_K:
        _l2_prefetch(qh_ptr + r3 * s_qh + cb * 2)
    if TYPE == Q8_0:
        _l2_prefetch(d_ptr + r3 * s_d + cb // 2)
    elif TYPE == Q4_0 or TYPE == Q5_0 or TYPE == Q4_1 or TYPE == Q5_1:
        _l2_prefetch(d_ptr + r3 * s_d + cb)
    elif TYPE == Q4_K or TYPE == Q5_K:
        _l2_prefetch(sc_ptr + r3 * s_sc + cb)
        _l2_prefetch(d_ptr + r3 * s_d + cb // 8)
    elif TYPE == Q6_K or TYPE == Q3_K or TYPE == Q2_K:
        _l2_prefetch(sc_ptr + r3 * s_sc + cb * 2)
        _l2_prefetch(d_ptr + r3 * s_d + cb // 8)


@triton.jit
def _gv_l2pf_ahead(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end,
                   TYPE: tl.constexpr, V: tl.constexpr, BB: tl.constexpr, L2PF: tl.constexpr):
    """In the loop at step c0: the L2 prefetch of the step L2PF steps ahead, if the program has
    one (L2PF 0: nothing)."""
    if L2PF:
        if c0 + L2PF * BB < c_end:
            _gv_l2pf(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0 + L2PF * BB,
                     c_end, TYPE, V, BB)


@triton.jit
def _gv_fence(out_ptr, zero, FENCE: tl.constexpr):
    """PREFETCH 1 / 4's fence: a store that never runs (zero is 0), placed between a step's
    prefetch loads and its x loads (see "Prefetch" in the GEMV notes)."""
    if FENCE:
        tl.store(out_ptr, zero.to(out_ptr.dtype.element_ty), mask=zero != 0)


@triton.jit
def _gv_pf_step(acc0, acc1, ss0, ss1, w, h, sc, d, c0, x_ptr, xq_ptr, xs_ptr, nw_ptr,
                q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, out_ptr, zero, t0, t1, K,
                stride_x, stride_xq, stride_xs, c_end, mg, lm, zu, TYPE: tl.constexpr,
                V: tl.constexpr, E: tl.constexpr, BB: tl.constexpr, BLOCK_T: tl.constexpr,
                EVEN: tl.constexpr, X_PAIRS: tl.constexpr, X_INT8: tl.constexpr,
                ASM: tl.constexpr, X_PRE: tl.constexpr, NORM: tl.constexpr,
                FENCE: tl.constexpr, L2PF: tl.constexpr):
    """One step of the PREFETCH loop: the L2 prefetch L2PF steps ahead (0: none; the kernel
    passes 0 without ASM), step c0 + BB's weight loads, the fence (FENCE), then step c0's decode
    of its words (w, h, sc, d, loaded a step before). Returns the accumulators and step
    c0 + BB's words."""
    _gv_l2pf_ahead(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end, TYPE, V,
                   BB, L2PF)
    wn, hn, scn, dn = _gv_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0 + BB,
                                c_end, TYPE, V, BB, EVEN)
    _gv_fence(out_ptr, zero, FENCE)
    acc0, acc1, ss0, ss1 = _gv_step(
        acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, xq_ptr, xs_ptr, nw_ptr, t0, t1, K, stride_x,
        stride_xq, stride_xs, c0, c_end, mg, lm, zu, TYPE, V, E, BB, BLOCK_T, EVEN, X_PAIRS,
        X_INT8, ASM, X_PRE, NORM)
    return acc0, acc1, ss0, ss1, wn, hn, scn, dn


@triton.jit
def _anchor_q(q, dep, E: tl.constexpr):
    """Packed int8 x with the dependency anchor (0) ORed into its first word."""
    if E == 4:
        r = (q[0] | dep,)
    else:
        r = (q[0] | dep, q[1])
    return r


@triton.jit
def _gv_step(acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, xq_ptr, xs_ptr, nw_ptr, t0, t1, K,
             stride_x, stride_xq, stride_xs, c0, c_end, mg, lm, zu,
             TYPE: tl.constexpr, V: tl.constexpr, E: tl.constexpr, BB: tl.constexpr,
             BLOCK_T: tl.constexpr, EVEN: tl.constexpr, X_PAIRS: tl.constexpr,
             X_INT8: tl.constexpr, ASM: tl.constexpr, X_PRE: tl.constexpr, NORM: tl.constexpr):
    """One step of the GEMV: x of chunks c0 .. c0 + BB - 1 read and converted (or, X_PRE, its
    int8 codes read), the step's weight words (w, h, sc, d) decoded against it into the
    accumulators (token rows t0, t1). NORM: x is taken times the norm weights (nw_ptr) and its
    squares are summed into ss0 / ss1 (see "Fused prologue and epilogues" in the GEMV notes)."""
    if X_PRE:
        tl.static_assert(not NORM, "NORM needs x itself, not its codes")
        # x quantized once per GEMV by `quantize_x` (the same chunks and rounding as the
        # in-kernel X_INT8 path below, so the results are identical): no per-program x
        # conversion, half the x bytes of bf16
        qa, sa, xsa = _gv_xpre(xq_ptr, xs_ptr, t0, stride_xq, stride_xs, c0, c_end, V, E, BB,
                               EVEN, ASM)
        qb, sb, xsb = qa, sa, xsa
        if BLOCK_T == 2:
            qb, sb, xsb = _gv_xpre(xq_ptr, xs_ptr, t1, stride_xq, stride_xs, c0, c_end, V, E,
                                   BB, EVEN, ASM)
        dep = _gv_dep(w, h, sc, d, zu, TYPE)
        pa = _gv_ipart(w, h, lm, _anchor_q(qa, dep, E), TYPE, V, ASM)
        acc0 = _gv_apply_q(acc0, pa, sa, xsa, 0, sc, d, TYPE, E)
        if BLOCK_T == 2:
            pb = _gv_ipart(w, h, lm, _anchor_q(qb, dep, E), TYPE, V, ASM)
            acc1 = _gv_apply_q(acc1, pb, sb, xsb, 0, sc, d, TYPE, E)
    else:
        acc0, acc1, ss0, ss1 = _gv_step_x(acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, nw_ptr, t0,
                                          t1, K, stride_x, c0, c_end, mg, lm, zu, TYPE, V, E,
                                          BB, BLOCK_T, EVEN, X_PAIRS, X_INT8, ASM, NORM)
    return acc0, acc1, ss0, ss1


@triton.jit
def _sq_sum(ss, xs, E: tl.constexpr):
    """ss [V, 1, BB] + the squares of x's fields (summed over V only in the epilogue: reducing
    per step measured 7% slower on the sm90 F16 gate_up GEMV)."""
    for j in tl.static_range(E):
        ss += xs[j] * xs[j]
    return ss


@triton.jit
def _tmul(a, b, E: tl.constexpr):
    """The E-tuples a, b multiplied field by field."""
    if E == 1:
        r = (a[0] * b[0],)
    elif E == 2:
        r = (a[0] * b[0], a[1] * b[1])
    elif E == 4:
        r = (a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3])
    elif E == 8:
        r = (a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3],
             a[4] * b[4], a[5] * b[5], a[6] * b[6], a[7] * b[7])
    else:
        tl.static_assert(E == 16, "E is 1, 2, 4, 8 or 16")
        r = (a[0] * b[0], a[1] * b[1], a[2] * b[2], a[3] * b[3],
             a[4] * b[4], a[5] * b[5], a[6] * b[6], a[7] * b[7],
             a[8] * b[8], a[9] * b[9], a[10] * b[10], a[11] * b[11],
             a[12] * b[12], a[13] * b[13], a[14] * b[14], a[15] * b[15])
    return r


@triton.jit
def _gv_step_x(acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, nw_ptr, t0, t1, K, stride_x, c0, c_end,
               mg, lm, zu, TYPE: tl.constexpr, V: tl.constexpr, E: tl.constexpr,
               BB: tl.constexpr, BLOCK_T: tl.constexpr, EVEN: tl.constexpr,
               X_PAIRS: tl.constexpr, X_INT8: tl.constexpr, ASM: tl.constexpr,
               NORM: tl.constexpr):
    """`_gv_step` with x read in its own dtype (converted per program and step)."""
    xa = _gv_x(x_ptr, t0, K, stride_x, c0, c_end, V, E, BB, EVEN, X_PAIRS)
    xb = xa
    if BLOCK_T == 2:
        xb = _gv_x(x_ptr, t1, K, stride_x, c0, c_end, V, E, BB, EVEN, X_PAIRS)
    if NORM:
        nw = _gv_x(nw_ptr, t0 * 0, K, 0, c0, c_end, V, E, BB, EVEN, False)
        ss0 = _sq_sum(ss0, xa, E)
        xa = _tmul(xa, nw, E)
        if BLOCK_T == 2:
            ss1 = _sq_sum(ss1, xb, E)
            xb = _tmul(xb, nw, E)
        else:
            xb = xa
    dep = _gv_dep(w, h, sc, d, zu, TYPE)
    if X_INT8:
        # the anchor joins x (quantized after every load arrived: ptxas then issues the
        # weight loads before the quantization work, not after it)
        depf = dep.to(tl.float32, bitcast=True)
        xa = _anchor(xa, depf, E)
        wd = w
        qa, sa, xsa = _gv_xq(xa, E)
        pa = _gv_ipart(wd, h, lm, qa, TYPE, V, ASM)
        acc0 = _gv_apply_q(acc0, pa, sa, xsa, xa, sc, d, TYPE, E)
        if BLOCK_T == 2:
            qb, sb, xsb = _gv_xq(_anchor(xb, depf, E), E)
            pb = _gv_ipart(wd, h, lm, qb, TYPE, V, ASM)
            acc1 = _gv_apply_q(acc1, pb, sb, xsb, xb, sc, d, TYPE, E)
    elif TYPE == F32 or TYPE == F16 or TYPE == BF16:
        # float weights: the anchor goes into x (+0.0), which every product uses
        depf = dep.to(tl.float32, bitcast=True)
        if E == 1:
            xa = (xa[0] + depf,)
            xb = (xb[0] + depf,)
        else:
            xa = (xa[0] + depf, xa[1])
            xb = (xb[0] + depf, xb[1])
        src = (w,)
        pa, pb = _gv_parts(w, src, mg, xa, xb, TYPE, E, BLOCK_T)
        acc0 = _gv_apply(acc0, pa, xa, sc, d, TYPE, E)
        if BLOCK_T == 2:
            acc1 = _gv_apply(acc1, pb, xb, sc, d, TYPE, E)
    else:
        src = _gv_sources(w, h, lm, TYPE, V)
        pa, pb = _gv_parts(w, src, mg | dep, xa, xb, TYPE, E, BLOCK_T)
        acc0 = _gv_apply(acc0, pa, xa, sc, d, TYPE, E)
        if BLOCK_T == 2:
            acc1 = _gv_apply(acc1, pb, xb, sc, d, TYPE, E)
    return acc0, acc1, ss0, ss1


@triton.jit
def _linear_gemv_kernel(
    x_ptr,                          # [T, K] act dtype, row stride stride_x
    xq_ptr, xs_ptr,                 # X_PRE: x's int8 codes [T, *] int32 words, scales [T, NCH]
    q_ptr,                          # [N, *] the "q" plane as int32 words (F32: float32)
    qh_ptr, sc_ptr, d_ptr,          # the other planes [N, *] (dequant.py; qh as int32 words)
    s_q, s_qh, s_sc, s_d,           # their row strides (elements of the pointer types)
    bias_ptr,                       # [N] (HAS_BIAS)
    out_ptr,                        # [T, N] act dtype (row stride stride_o) | [SPLIT_K, T, N] f32
    T, N, K, NCH, stride_x, stride_xq, stride_xs, stride_o, CH_PER_SPLIT,
    magic, lanes, zero,             # MAGIC, _lanes_mask(TYPE), 0 (see the GEMV notes)
    TYPE: tl.constexpr, V: tl.constexpr, E: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN: tl.constexpr, X_PAIRS: tl.constexpr,
    X_INT8: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr, X_PRE: tl.constexpr,
    PDL: tl.constexpr,
    res_ptr=None, nw_ptr=None,      # RESID: [T, N] (row stride stride_r); NORM: [K] norm weights
    stride_r=0, eps=0.0,
    NORM: tl.constexpr = False, RESID: tl.constexpr = False, ACT: tl.constexpr = 0,
    L2PF: tl.constexpr = 0,
):
    """BLOCK_K: columns per step = BB chunks of V x E elements (one chunk per thread).
    EVEN: every step whole (no masks). X_PAIRS: see `_gv_xpiece`. X_INT8: int8 activations
    and dp4a (see the notes above `_dp4a`; ASM: real dp4a, else emulated). PREFETCH: 0 = one
    step's loads at a time; 1 = the next step's weight loads issued before each decode, behind
    a fence; 2 = the same without the fence (ptxas places them); 4 / 3 = 1 / 2 with two steps
    per loop iteration (see the GEMV notes).
    X_PRE: x comes quantized (xq_ptr, xs_ptr: `quantize_x`), not from x_ptr (X_INT8 types).
    PDL: launched with programmatic dependent launch (kernels/pdl.py): the weights are constant,
    so with PREFETCH the first step's weight loads are issued before the wait for the previous
    kernel (whose tail they overlap); x and the outputs only after it.
    Fusions (see "Fused prologue and epilogues" in the GEMV notes; SPLIT off): NORM: x is the
    input of an rms_norm (weights nw_ptr, eps) and the GEMV is that of its output. ACT (1 silu,
    2 gelu_tanh): the weight is [gate; up] (2N rows, gate rows first) and out [T, N] = act(x @
    gate^T) * (x @ up^T); each program takes BLOCK_N / 2 rows of each. RESID: out = res + the
    product.
    L2PF (NVIDIA, with ASM): the weights of the program's first L2PF steps are prefetched into
    L2 before anything else (before the PDL wait: they are constant), and each step prefetches
    the one L2PF steps ahead (with PREFETCH, one of them is the step it loads next: see "L2
    prefetch" in the GEMV notes)."""
    pdl_launch(PDL)
    tl.static_assert(BLOCK_T == 1 or BLOCK_T == 2, "BLOCK_T must be 1 or 2")
    BB: tl.constexpr = BLOCK_K // (V * E)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    pid_t = pid % n_tb          # token blocks fastest: programs sharing a weight tile run together
    pid_n = pid // n_tb
    t0 = pid_t * BLOCK_T
    t1 = tl.minimum(t0 + 1, T - 1)              # (a clamped row: computed, never stored)
    if ACT:
        # rows (gate n, up n) in pairs: the epilogue splits the sums into the two halves
        i = tl.arange(0, BLOCK_N)
        cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        rows = tl.minimum(pid_n * (BLOCK_N // 2) + i // 2, N - 1) + (i % 2) * N
        r3 = rows.to(tl.int64)[None, :, None]
    else:
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = rows
        r3 = tl.minimum(rows, N - 1).to(tl.int64)[None, :, None]   # clamped: no row mask
    c_begin = pid_k * CH_PER_SPLIT
    c_end = tl.minimum(c_begin + CH_PER_SPLIT, NCH)
    mg = magic.to(tl.uint32, bitcast=True)
    lm = lanes.to(tl.uint32, bitcast=True)
    zu = zero.to(tl.uint32, bitcast=True)
    acc0 = tl.zeros((1, BLOCK_N, BB), tl.float32)
    acc1 = tl.zeros((1, BLOCK_N, BB), tl.float32)
    if NORM:
        ss0 = tl.zeros((V, 1, BB), tl.float32)
        ss1 = tl.zeros((V, 1, BB), tl.float32)
    else:
        ss0 = tl.zeros((1, 1, 1), tl.float32)
        ss1 = ss0
    L2: tl.constexpr = L2PF if ASM else 0     # (the L2 prefetch is NVIDIA's PTX)
    if L2:
        for c0 in range(c_begin, tl.minimum(c_begin + L2 * BB, c_end), BB):
            _gv_l2pf(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end, TYPE, V,
                     BB)
    if PREFETCH:
        # (see "prefetch" in the GEMV notes) step c0 + BB's weight words are loaded before step
        # c0's decode and carried to the next iteration; the last step is peeled off the loop
        c_last = c_begin + (tl.cdiv(c_end - c_begin, BB) - 1) * BB
        FENCE: tl.constexpr = PREFETCH == 1 or PREFETCH == 4
        w, h, sc, d = _gv_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3,
                                c_begin, c_end, TYPE, V, BB, EVEN)
        pdl_wait(PDL)
        if PREFETCH >= 3:
            # two steps per iteration, the second's words loaded into the registers the first
            # freed: nothing is carried in a register copy (see "Prefetch" in the GEMV notes)
            c_pairs = c_begin + (c_last - c_begin) // (2 * BB) * (2 * BB)
            for c0 in range(c_begin, c_pairs, 2 * BB):
                acc0, acc1, ss0, ss1, wn, hn, scn, dn = _gv_pf_step(
                    acc0, acc1, ss0, ss1, w, h, sc, d, c0, x_ptr, xq_ptr, xs_ptr, nw_ptr,
                    q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, out_ptr, zero, t0,
                    t1, K, stride_x, stride_xq, stride_xs, c_end, mg, lm, zu, TYPE, V, E, BB,
                    BLOCK_T, EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM, FENCE, L2)
                acc0, acc1, ss0, ss1, w, h, sc, d = _gv_pf_step(
                    acc0, acc1, ss0, ss1, wn, hn, scn, dn, c0 + BB, x_ptr, xq_ptr, xs_ptr,
                    nw_ptr, q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, out_ptr,
                    zero, t0, t1, K, stride_x, stride_xq, stride_xs, c_end, mg, lm, zu, TYPE, V,
                    E, BB, BLOCK_T, EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM, FENCE, L2)
            if c_pairs < c_last:    # an odd number of steps before the last
                acc0, acc1, ss0, ss1, w, h, sc, d = _gv_pf_step(
                    acc0, acc1, ss0, ss1, w, h, sc, d, c_pairs, x_ptr, xq_ptr, xs_ptr, nw_ptr,
                    q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, out_ptr, zero, t0,
                    t1, K, stride_x, stride_xq, stride_xs, c_end, mg, lm, zu, TYPE, V, E, BB,
                    BLOCK_T, EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM, FENCE, L2)
        else:
            for c0 in range(c_begin, c_last, BB):
                acc0, acc1, ss0, ss1, w, h, sc, d = _gv_pf_step(
                    acc0, acc1, ss0, ss1, w, h, sc, d, c0, x_ptr, xq_ptr, xs_ptr, nw_ptr,
                    q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, out_ptr, zero, t0,
                    t1, K, stride_x, stride_xq, stride_xs, c_end, mg, lm, zu, TYPE, V, E, BB,
                    BLOCK_T, EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM, FENCE, L2)
        acc0, acc1, ss0, ss1 = _gv_step(
            acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, xq_ptr, xs_ptr, nw_ptr, t0, t1, K,
            stride_x, stride_xq, stride_xs, c_last, c_end, mg, lm, zu, TYPE, V, E, BB, BLOCK_T,
            EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM)
    else:
        pdl_wait(PDL)
        for c0 in range(c_begin, c_end, BB):
            _gv_l2pf_ahead(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end,
                           TYPE, V, BB, L2)
            w, h, sc, d = _gv_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3,
                                    c0, c_end, TYPE, V, BB, EVEN)
            acc0, acc1, ss0, ss1 = _gv_step(
                acc0, acc1, ss0, ss1, w, h, sc, d, x_ptr, xq_ptr, xs_ptr, nw_ptr, t0, t1, K,
                stride_x, stride_xq, stride_xs, c0, c_end, mg, lm, zu, TYPE, V, E, BB, BLOCK_T,
                EVEN, X_PAIRS, X_INT8, ASM, X_PRE, NORM)
    _gv_store(acc0, ss0, t0, T, rows, cols, bias_ptr, out_ptr, res_ptr, stride_o, stride_r,
              pid_k, N, K, eps, HAS_BIAS, SPLIT, NORM, RESID, ACT)
    if BLOCK_T == 2:
        _gv_store(acc1, ss1, t0 + 1, T, rows, cols, bias_ptr, out_ptr, res_ptr, stride_o,
                  stride_r, pid_k, N, K, eps, HAS_BIAS, SPLIT, NORM, RESID, ACT)


@triton.jit
def _xquant_kernel(
    x_ptr,                          # [T, K] act dtype, row stride stride_x
    xq_ptr,                         # [T, NCH * V * E / 4] int32 words of int8 codes
    xs_ptr,                         # [T, NCH] float32 chunk scales
    K, NCH, stride_x, stride_xq, stride_xs,
    V: tl.constexpr, E: tl.constexpr, BB: tl.constexpr, EVEN: tl.constexpr,
    X_PAIRS: tl.constexpr, PDL: tl.constexpr,
):
    """x quantized to int8 per GEMV chunk (V x E elements), exactly as the GEMV's in-kernel
    X_INT8 path does it (`_gv_x` + `_gv_xq`), stored in the byte order its dp4a takes: per x
    word, E = 8: (elements 0 2 4 6, elements 1 3 5 7), E = 4: (0 1 2 3), and in the word order
    xquant.py's layout. Program (t, block of BB chunks); chunks past K read x as 0."""
    pdl_launch(PDL)
    pdl_wait(PDL)
    t = tl.program_id(0)
    c0 = tl.program_id(1) * BB
    xs = _gv_x(x_ptr, t, K, stride_x, c0, NCH, V, E, BB, EVEN, X_PAIRS)
    packed, sums, scale = _gv_xq(xs, E)
    cb = c0 + tl.arange(0, BB)[None, None, :]
    v3 = tl.arange(0, V)[:, None, None]
    row = xq_ptr + t.to(tl.int64) * stride_xq
    m = cb < NCH
    if E == 8:
        off = _xq_word(cb, v3, V)
        tl.store(row + off, packed[0].to(tl.int32, bitcast=True), mask=m)
        tl.store(row + off + XQ_LANES * V, packed[1].to(tl.int32, bitcast=True), mask=m)
    else:
        tl.store(row + cb * V + v3, packed[0].to(tl.int32, bitcast=True), mask=m)
    tl.store(xs_ptr + t.to(tl.int64) * stride_xs + cb, scale, mask=m)


@triton.jit
def _linear_splitk_reduce_kernel(
    part_ptr,    # [SPLIT_K, T*N] float32 partial sums
    bias_ptr,    # [N] (HAS_BIAS)
    out_ptr,     # [T, N] act dtype, row stride stride_o
    TN, N, stride_o,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_launch(PDL)
    pdl_wait(PDL)
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
# prefill / batch decode: dequant GEMM


# T (the token count) is not specialised: a prefill of 7 tokens and one of 64 would otherwise
# compile every tile twice (divisible by 16 or not) for nothing; it only bounds rows.
@triton.jit(do_not_specialize=["T"])
def _linear_gemm_kernel(
    x_ptr,                          # [T, K] act dtype, row stride stride_x
    q_ptr, qh_ptr, sc_ptr, d_ptr,   # weight planes [N, *] (dequant.py)
    s_q, s_qh, s_sc, s_d,           # their row strides (elements)
    bias_ptr,                       # [N] (HAS_BIAS)
    out_ptr,                        # [T, N] act dtype, row stride stride_o; SPLIT: [splits, T, N] f32
    T, N, K, NSUB, stride_x, stride_o,
    S_PER_SPLIT,                    # sub-blocks per split (a multiple of BLOCK_S; SPLIT only)
    TYPE: tl.constexpr, SUB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,            # program_id(1) takes sub-blocks [S_PER_SPLIT * id, ..)
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
    if SPLIT:
        s_lo = tl.program_id(1) * S_PER_SPLIT
        s_hi = tl.minimum(s_lo + S_PER_SPLIT, NSUB)
    else:
        s_lo = 0
        s_hi = NSUB
    for s0 in range(s_lo, s_hi, BLOCK_S):
        # (sub-blocks >= s_hi decode to zero weights: scales and codes load as 0)
        q, s, m = _decode_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                               r64, rmask, s0, s_hi, K, TYPE, SUB, SUB, BLOCK_S)
        w = tl.reshape(_apply_scale(q, s, m, TYPE).to(act), (BLOCK_N, BLOCK_K))
        k = s0 * SUB + kk
        x = tl.load(x_rows + k[None, :], mask=mmask[:, None] & (k < K)[None, :], other=0.0)
        if DOT_UPCAST:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if SPLIT:  # float32 partial sums; _linear_splitk_reduce_kernel adds them and the bias
        out_ptr += tl.program_id(1).to(tl.int64) * T * N
    elif HAS_BIAS:
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


# Weight rows per GEMV thread (at one token row) on NVIDIA: 8 rows keep ~128 B of loads per
# thread in flight at <= ~128 registers; the types whose decode needs spread words (Q5_*, Q6_K,
# Q3_K) take 4 (8 rows need ~250 registers: the compile report).
GEMV_ROWS = {"F32": 8, "F16": 8, "BF16": 8, "Q8_0": 8, "Q4_0": 8, "Q4_1": 8, "Q4_K": 8,
             "Q2_K": 8, "Q5_0": 4, "Q5_1": 4, "Q5_K": 4, "Q6_K": 4, "Q3_K": 4}
GEMV_WARPS_PER_CU = {"nvidia": 12, "amd": 8}   # warps per CU the grid should at least provide
# Types whose GEMV can take int8 activations and dp4a (X_INT8: NVIDIA, bf16/fp16 activations).
INT8_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K")


def gemv_default(ggml_type: int, T: int, N: int, K: int, cus: int = 16, warp: int = 32,
                 vendor: str = "nvidia", interpreter: bool = False, exact: bool = False) -> dict:
    """Launcher default for "linear_gemv".

    A step covers one chunk (V words, gemv_shape) per thread: BLOCK_K = lanes x warps x
    elements per chunk columns. num_warps is the largest of 4, 2, 8, 1 whose step divides the
    row evenly (no masked tail, EVEN), else 4 (or fewer for short rows). BLOCK_N rows per
    program come from GEMV_ROWS (halved for 2 token rows, and on AMD, whose decode needs more
    registers per row); with too few programs to keep GEMV_WARPS_PER_CU warps per compute
    unit busy, BLOCK_N drops (to 2), then SPLIT_K splits K, then BLOCK_N drops to 1.
    X_INT8 (NVIDIA, INT8_TYPES, not `exact`): bf16/fp16 activations are quantized to int8 per
    chunk and the codes multiplied with dp4a; `exact` (float32 activations, which always take
    the exact float32 decode) keeps the float path's rows per thread.
    PREFETCH 0 (1 and 2 pipeline the weight loads one step ahead, see the GEMV notes: opt-in
    through a table until measured); L2PF 0 (no L2 prefetch: opt-in through a table); ASYNC 0
    (the shared-memory Q4_K / Q8_0 GEMV of kernels/gemv_async.py: opt-in through a table).
    Under the CPU interpreter: 64 rows, one warp (fewer, larger programs run faster there).
    """
    info = TYPES[int(ggml_type)]
    V, E = gemv_shape(ggml_type)
    epc = V * E
    nch = triton.cdiv(K, epc)
    bt = 1 if T <= 1 else MAX_BLOCK_T
    if interpreter:
        return {"BLOCK_N": 64, "BLOCK_K": epc * warp, "SPLIT_K": 1, "MAX_T": MAX_BLOCK_T,
                "X_INT8": 0, "PREFETCH": 0, "X_PRE": 0, "PDL": 1, "FUSE_NORM": 1, "L2PF": 0,
                **gemv_async.ASYNC_DEFAULT, "num_warps": 1, "num_stages": 1}
    nw = None
    for cand in (4, 2, 8, 1):
        if nch % (warp * cand) == 0:
            nw = cand
            break
    if nw is None:
        nw = 4
        while nw > 1 and warp * nw > nch:
            nw //= 2
    bb = warp * nw
    x_int8 = int(vendor == "nvidia" and info.name in INT8_TYPES and not exact)
    bn = 8 if x_int8 else GEMV_ROWS[info.name]
    if vendor == "amd":
        bn = max(1, bn // 2)
    bn = max(1, bn // bt)
    target = GEMV_WARPS_PER_CU.get(vendor, 16) * cus
    n_tb = triton.cdiv(max(T, 1), bt)

    def warps(rows: int, split: int) -> int:
        return triton.cdiv(N, rows) * n_tb * nw * split

    while bn > 2 and warps(bn, 1) < target:
        bn //= 2
    steps = triton.cdiv(nch, bb)
    split = 1
    while warps(bn, split) < target and split * 2 <= min(8, steps):
        split *= 2
    while bn > 1 and warps(bn, split) < target:
        bn //= 2
    return {"BLOCK_N": bn, "BLOCK_K": bb * epc, "SPLIT_K": split, "MAX_T": MAX_BLOCK_T,
            "X_INT8": x_int8, "PREFETCH": 0, "X_PRE": 0, "PDL": 1, "FUSE_NORM": 1, "L2PF": 0,
            **gemv_async.ASYNC_DEFAULT, "num_warps": nw, "num_stages": 1}


# T at and above which quantized weights take dequantize + torch.matmul on NVIDIA. The fused GEMM
# (tl.dot on the decoded tile) reached ~110-320 TFLOP/s on H100 at T = 512 (run 1: Q4_0 318,
# Q8_0 310, Q4_K 235, Q5_K 137, Q6_K 108); dequantize (~2.6 TB/s, ~60 us for a 14336 x 4096
# weight) + cuBLAS (~600 TFLOP/s) wins from T = D / (2 N K (1/F - 1/600 TFLOP/s)): ~380 for
# Q8_0 / Q4_0, ~190 for Q4_K, ~70-90 for Q5_K / Q6_K (their fused decode is slow).
# Batch decode (H100, run 6, T = 32): the fused GEMM streams Q6_K / Q5_K weights at only
# 180-480 GB/s (4096 x 14336 Q6_K: 272 us, the 8B model's ffn_down in half the layers), while
# dequantize + cuBLAS costs ~100 us there; so the types with the costliest decode switch at 8.
# DEQUANT_EAGER = 0 (NVIDIA): the switch applies only inside graph capture (batch decode). An
# eager prefill pays host time per launch, and two launches + a cuBLAS call per linear made
# pp512 host-bound: 8B Q4_K_M 9,188 tok/s vs 11,138 fused, 1B 19,568 vs 33,960 (run 6), although
# the dequantize path's GPU time was lower (8B: 19.7 ms per 512-token step).
DEQUANT_T_NVIDIA = {"Q8_0": 384, "Q4_0": 384, "Q4_1": 384, "Q4_K": 192, "Q6_K": 8, "Q5_K": 8,
                    "Q5_0": 8, "Q5_1": 8, "Q3_K": 8, "Q2_K": 8}
DEQUANT_T_NVIDIA_DEFAULT = 256
# KQ_T: T up to which Q4_K / Q6_K weights take forge/kernels/kgemm.py's GEMM on scaled integer
# codes (bf16 activations) instead of the paths above. Off by default (0): with its launcher
# default it lost to the fused GEMM at T = 16 (Q4_K 0.49-0.80x, H100, run 11) and won only with
# searched tiles and split-K at T = 32 (Q4_K 1.05-2.37x the fused GEMM, Q6_K 1.4-2.5x dequantize +
# cuBLAS); the sm90 table turns it on per (type, shape) where bench/bench_kq.py measured a win.
KQ_T_NVIDIA = 0


def gemm_default(ggml_type: int, T: int, N: int, K: int, vendor: str = "amd") -> dict:
    """Launcher default for "linear_gemm".

    BLOCK_M follows T up to 64 (128 on NVIDIA, whose shared memory holds 128 x 128 x 64 tiles
    at 3 stages; AMD's 64 KiB LDS takes 64 x 64 x 64 at 2 stages), so that a batch of up to 64
    decode tokens streams the weights once. Up to 64 rows the tile is 64 weight rows x 128
    columns per step (twice the bytes of the large tiles: the weight loads are not pipelined, so
    each step is a memory round trip); above, 128 x 64 x 64 (NVIDIA) / 64 x 64 x 64.
    SPLIT_K (default 1; tables may set it): program_id(1) takes a share of K and the split-K
    reduce kernel sums the float32 partials. A batch-decode grid has one program per 64
    weight rows (96 for Llama-3-8B's 6144-row qkv weight, under one per SM on an H100), so
    splitting looked attractive, but at T = 32 (8B Q4_K_M, H100, session 5) it made the
    kernels faster and the step slower: qkv 6144 x 4096 29.4 -> 20.3 us (3 ways, +1.8 us
    reduce), o 4096 x 4096 29.5 -> 27.4 (+1.8); b32 tg 3,136 tok/s unsplit vs 3,085-3,097 with
    qkv and o split and 3,106 (another machine: 3,158 unsplit) with every weight split to ~2
    programs per SM (at most 8 ways, >= 4 steps each).
    DEQUANT_T: see DEQUANT_T_NVIDIA (AMD keeps the fused GEMM: 0). KQ_T: see KQ_T_NVIDIA
    (tables set it; NVIDIA only: kgemm builds its operands with PTX).
    """
    info = TYPES[int(ggml_type)]
    sub = info.sub
    big = vendor == "nvidia"
    bm = 16 if T <= 16 else 32 if T <= 32 else 64 if (T <= 64 or not big) else 128
    if T <= 64:
        bn, bk = 64, 128
    else:
        bn, bk = (128 if bm == 128 else 64), 64
    warps = 8 if bm * bn >= 128 * 128 else 4
    dq = DEQUANT_T_NVIDIA.get(info.name, DEQUANT_T_NVIDIA_DEFAULT) if big else 0
    kq = KQ_T_NVIDIA if big and info.name in kgemm.KQ_TYPES else 0
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_S": max(1, bk // sub), "GROUP_M": 8, "SPLIT_K": 1,
            "DEQUANT_T": dq, "DEQUANT_EAGER": 0 if big else 1, "KQ_T": kq,
            "num_warps": warps, "num_stages": 3 if big else 2}


def _cfg(kernel: str, ggml_type: int, dims: dict, default: dict) -> dict:
    """Generic entry for `kernel`, then a type-specific one ("linear_gemv.Q4_K") over it,
    unless the generic entry comes from a table that ranks above the type-specific one's (an
    override or the user's table beats a shipped per-type entry: tuning.typed_wins)."""
    b = tuning.bucket(**dims)
    base = tuning.resolve(kernel, b, default)
    spec = tuning.resolve(f"{kernel}.{TYPES[ggml_type].name}", b, base.config)
    return spec.config if tuning.typed_wins(base.level, spec.level) else base.config


@functools.lru_cache(maxsize=4096)
def _configs(ggml_type: int, T: int, N: int, K: int, exact: bool = False) -> tuple[dict, dict]:
    """(GEMV config, GEMM config); `exact`: float32 activations (see gemv_default)."""
    dims = {"T": T, "N": N, "K": K}
    vendor, cus, warp = _device()
    gv = gemv_default(ggml_type, T, N, K, cus, warp, vendor, interpreter=_INTERPRET, exact=exact)
    return (_cfg("linear_gemv", ggml_type, dims, gv),
            _cfg("linear_gemm", ggml_type, dims, gemm_default(ggml_type, T, N, K, vendor)))


@functools.lru_cache(maxsize=1024)
def _kq_config(ggml_type: int, T: int, N: int, K: int) -> dict:
    """The "linear_kq" config (forge/kernels/kgemm.py) for a Q4_K / Q6_K weight at T rows."""
    return _cfg("linear_kq", ggml_type, {"T": T, "N": N, "K": K},
                kgemm.kq_default(ggml_type, T, N, K))


def _takes_kq(x: torch.Tensor, gm: dict) -> bool:
    """Whether x [T, K] goes to kgemm under GEMM config gm (T <= its KQ_T, bf16 rows)."""
    return x.shape[0] <= gm.get("KQ_T", 0) and x.dtype == torch.bfloat16 and x.stride(1) == 1


def clear_config_cache() -> None:
    """Forget resolved launch configs (after changing a tuning table)."""
    _configs.cache_clear()
    _kq_config.cache_clear()


# ------------------------------------------------------------------------------------------------
# dequantize + torch.matmul


# At most this much dequantized weight per torch.matmul call: 256 MiB holds the largest layer
# weight of 8B-class models (28672 x 4096 fused gate+up in bf16, 235 MB) in one piece, so a
# prefill linear is one dequantize and one cuBLAS call (each piece costs host time too).
SCRATCH_BYTES = 256 << 20
_scratch: dict[tuple, torch.Tensor] = {}


def _scratch_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer of at least `numel` elements, reused across calls (one per device and
    dtype, grown as needed). During CUDA/HIP graph capture a private buffer is returned
    instead (the shared one must not be reallocated under a captured graph)."""
    if precompile.stream_capturing(device):
        return torch.empty(numel, dtype=dtype, device=device)
    key = (device, dtype)
    buf = _scratch.get(key)
    if buf is None or buf.numel() < numel:
        _scratch.pop(key, None)
        buf = torch.empty(numel, dtype=dtype, device=device)
        _scratch[key] = buf
    return buf


def _row_slice(w: QTensor, r0: int, r1: int) -> QTensor:
    return QTensor(w.ggml_type, (r1 - r0, w.cols), {p: t[r0:r1] for p, t in w.data.items()},
                   w.layout)


def _dequant_matmul(x: torch.Tensor, w: QTensor, out: torch.Tensor) -> None:
    """out = x @ dequantize(W)^T in x's dtype, the weight dequantized SCRATCH_BYTES at a time
    (whole when it fits: one cuBLAS call)."""
    N, K = w.shape
    rows = max(1, min(N, SCRATCH_BYTES // (K * x.element_size())))
    if rows < N:
        rows = max(256, rows // 256 * 256)
    buf = _scratch_buffer(rows * K, x.dtype, x.device)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        part = w if (r0 == 0 and r1 == N) else _row_slice(w, r0, r1)
        wd = dequantize(part, dtype=x.dtype, out=buf[: (r1 - r0) * K].view(r1 - r0, K))
        if out.dtype != x.dtype:  # float32 results of 16-bit inputs (the logits head)
            out[:, r0:r1] = _mm_f32(x, wd.t())
        elif r0 == 0 and r1 == N:
            torch.matmul(x, wd.t(), out=out)
        else:
            out[:, r0:r1] = torch.matmul(x, wd.t())


_MM_OUT_DTYPE: list[bool] = []   # whether torch.mm takes out_dtype (checked once)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with 16-bit inputs and a float32 result (no float16 overflow of the output)."""
    if not _MM_OUT_DTYPE:
        try:
            torch.mm(a[:1, :1], b[:1, :1], out_dtype=torch.float32)
            _MM_OUT_DTYPE.append(True)
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE.append(False)
    if _MM_OUT_DTYPE[0]:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def _float_matmul(x: torch.Tensor, w: QTensor, out: torch.Tensor) -> bool:
    """torch.matmul for a float weight where it is exact and fast; False if not handled."""
    K = w.cols
    q = w.data["q"][:, :K]
    if q.dtype == x.dtype:
        torch.matmul(x, q.t(), out=out)
    elif q.dtype == torch.float16 and x.dtype == torch.bfloat16:
        # float16 products of the weight and the activations (bf16 -> fp16 is exact in range),
        # float32 accumulation and result, rounded once to bf16
        out.copy_(_mm_f32(x.to(torch.float16), q.t()))
    elif q.dtype == torch.float32 and x.dtype != torch.float32:
        out.copy_(torch.matmul(x.float(), q.t()))
    else:
        return False
    return True


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
        if out.shape != (x.shape[0], w.rows) or out.dtype not in (x.dtype, torch.float32) \
                or out.device != dev or out.stride(1) != 1:
            raise ValueError(f"out: expected {x.dtype} (or float32) {(x.shape[0], w.rows)} with "
                             f"unit column stride on {dev}")
    return info


def _gemv_planes(w: QTensor) -> list:
    """plane_args with the "q" plane (and a qh plane) viewed as 32-bit words, strides in words:
    the GEMV reads the low bits one int32 word at a time."""
    ptrs, strides = [], []
    q = w.data["q"]
    for p in PLANES:
        t = w.data.get(p)
        if t is None:
            ptrs.append(q)
            strides.append(0)
            continue
        if p == "q" and t.dtype != torch.float32:
            t = t.view(torch.int32)
        ptrs.append(t)
        strides.append(t.stride(0))
    return ptrs + strides


def _xq_blocks(nch: int) -> int:
    """Chunks per quantize program: the largest of 128 .. 32 dividing nch (no masked tail),
    else 32 (or fewer for short rows)."""
    for bb in (128, 64, 32):
        if nch % bb == 0:
            return bb
    return max(1, min(32, triton.next_power_of_2(nch)))


def quantize_x(x: torch.Tensor, V: int, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, K] (bf16/fp16, unit column stride) -> (codes int32 [T, xquant.xq_words(NCH, V, E)], scales
    float32 [T, NCH]) for the GEMV's X_PRE path: chunks of V x E elements, each with scale
    max|x| / 127 and round-to-nearest int8 codes, bit-identical to the in-kernel X_INT8
    quantization."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_x: expected a 2-D float16/bfloat16 x with unit column "
                         f"stride, got {x.dtype} {tuple(x.shape)}")
    hit = xquant.lookup(x, V, E)
    if hit is not None:
        return hit
    T, K = x.shape
    epc = V * E
    nch = triton.cdiv(K, epc)
    xq, xs = xquant.alloc(T, K, V, E, x.device)
    bb = _xq_blocks(nch)
    if T > 0:
        _xquant_kernel[(T, triton.cdiv(nch, bb))](
            x, xq, xs, K, nch, x.stride(0), xq.stride(0), xs.stride(0),
            V=V, E=E, BB=bb, EVEN=nch % bb == 0 and K % epc == 0,
            X_PAIRS=x.dtype == torch.bfloat16 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0,
            num_warps=max(1, min(4, bb // 32)), num_stages=1, **pdl.launch_args())
    xquant.remember(x, V, E, xq, xs)
    return xq, xs


def _x_pre(x: torch.Tensor, w: QTensor, gv: dict) -> tuple[bool, bool]:
    """(X_INT8, X_PRE) of the GEMV of x with w under config gv."""
    x_int8 = bool(gv.get("X_INT8", 0)) and x.dtype != torch.float32 \
        and TYPES[w.ggml_type].name in INT8_TYPES
    return x_int8, x_int8 and bool(gv.get("X_PRE", 0))


def _gemv_split(w: QTensor, gv: dict) -> tuple[int, int, int]:
    """(chunks per step, splits, chunks per split) of the GEMV of w under config gv."""
    V, E = gemv_shape(w.ggml_type)
    bb = max(1, gv["BLOCK_K"] // (V * E))
    split, per = _split_k(triton.cdiv(w.cols, V * E), bb, gv["SPLIT_K"])
    return bb, split, per


def _act_block_n(bn: int, act: int) -> int:
    """The GEMV's BLOCK_N for a config's: ACT takes the rows in (gate, up) pairs, at least one
    pair per program."""
    return max(2, bn) if act else bn


def _derive_gemv(ce: dict) -> None:
    """Compile specs' "derive": the launcher's BLOCK_N from a table entry's."""
    ce["BLOCK_N"] = _act_block_n(ce["BLOCK_N"], ce.get("ACT", 0))


def _gemv(x: torch.Tensor, w: QTensor, bias, out: torch.Tensor, gv: dict,
          fused: dict | None = None) -> None:
    """fused: the kernel's fusion arguments (res_ptr, nw_ptr, stride_r, eps, NORM, RESID,
    ACT: see `linear`); None for a plain GEMV."""
    T = x.shape[0]
    N, K = w.shape
    V, E = gemv_shape(w.ggml_type)
    epc = V * E
    bt = 1 if T <= 1 else MAX_BLOCK_T
    fused = fused or {}
    bn = _act_block_n(gv["BLOCK_N"], fused.get("ACT", 0))
    bb, split, per = _gemv_split(w, gv)
    nch = triton.cdiv(K, epc)
    even = nch % bb == 0 and per % bb == 0 and K % epc == 0
    if fused.get("ACT"):
        N //= 2                     # out has N / 2 columns
        grid = (triton.cdiv(N, bn // 2) * triton.cdiv(T, bt), split)
    else:
        grid = (triton.cdiv(N, bn) * triton.cdiv(T, bt), split)
    x_int8, x_pre = _x_pre(x, w, gv)
    xq, xs = quantize_x(x, V, E) if x_pre else (x, x)
    if (gv.get("ASYNC") and split == 1 and bias is None and out.stride(-1) == 1
            and not fused.get("NORM") and not fused.get("ACT")
            and gemv_async.eligible(w.ggml_type, T, N, K, gv, x_pre,
                                    gemv_async.smem_limit(x.device))):   # (0: unsupported)
        # Q4_K / Q8_0 through shared memory by async copies (kernels/gemv_async.py)
        gemv_async.launch(xq, xs, w.data, N, K, out, gv,
                          fused.get("res_ptr") if fused.get("RESID") else None, w.ggml_type)
        return
    dst = out if split == 1 else torch.empty((split, T, N), dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else out
    _linear_gemv_kernel[grid](
        x, xq, xs, *_gemv_planes(w), bias_arg, dst, T, N, K, nch, x.stride(0),
        xq.stride(0) if x_pre else 0, xs.stride(0) if x_pre else 0, out.stride(0), per,
        MAGIC, _lanes_mask(w.ggml_type), 0,
        TYPE=w.ggml_type, V=V, E=E, BLOCK_T=bt, BLOCK_N=bn, BLOCK_K=bb * epc,
        HAS_BIAS=bias is not None, SPLIT=split > 1, EVEN=even,
        X_PAIRS=x.dtype == torch.bfloat16 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0,
        X_INT8=x_int8, ASM=not _INTERPRET and torch.version.hip is None,
        PREFETCH=int(gv.get("PREFETCH", 0)), X_PRE=x_pre,
        L2PF=int(gv.get("L2PF", 0)),
        num_warps=gv["num_warps"], num_stages=gv["num_stages"],
        **pdl.launch_args(bool(gv.get("PDL", 1))), **fused)   # (a table may turn PDL off)
    if split > 1:
        _reduce_splits(dst, bias, out, split)


def _split_k(units: int, step: int, want) -> tuple[int, int]:
    """(splits, units per split) for a K loop over `units` (chunks or sub-blocks) taken `step`
    at a time, split at most `want` ways: whole steps per split, no empty split."""
    steps = triton.cdiv(units, step)
    split = max(1, min(int(want), steps))
    per = triton.cdiv(steps, split) * step
    return triton.cdiv(units, per), per


def _reduce_splits(part: torch.Tensor, bias, out: torch.Tensor, split: int) -> None:
    """out = the sum of the float32 partials part [split, T, N] (+ bias), in out's dtype."""
    T, N = out.shape
    blk = 1024
    _linear_splitk_reduce_kernel[(triton.cdiv(T * N, blk),)](
        part, bias if bias is not None else out, out, T * N, N, out.stride(0),
        SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=blk, num_warps=4, **pdl.launch_args())


def _fusion(x: torch.Tensor, w: QTensor) -> tuple[dict, bool, bool, bool]:
    """(GEMV config, whether a GEMV with residual / act runs (T <= MAX_T, unsplit), whether it
    may take the norm too (x read as it is, not pre-quantized, and the config's FUSE_NORM set),
    whether x is pre-quantized (X_PRE))."""
    T = x.shape[0]
    gv, _ = _configs(w.ggml_type, T, w.rows, w.cols, x.dtype == torch.float32)
    gemv = 0 < T <= gv["MAX_T"] and _gemv_split(w, gv)[1] == 1
    x_pre = _x_pre(x, w, gv)[1]
    return gv, gemv, gemv and not x_pre and bool(gv.get("FUSE_NORM", 1)), x_pre


def can_fuse(x: torch.Tensor, w: QTensor, norm: bool = False) -> bool:
    """Whether `linear(x, w, ...)` with residual / act (and, with `norm`, the norm too) runs as
    one GEMV launch (see `_fusion`)."""
    _, gemv, with_norm, _ = _fusion(x, w)
    return with_norm if norm else gemv


def _check_fused(x: torch.Tensor, w: QTensor, residual, norm, act) -> int:
    """Validate linear's fusion arguments; the number of output columns."""
    n = w.rows
    if act is not None:
        if act not in ACT_KINDS:
            raise ValueError(f"act: expected one of {ACT_KINDS}, got {act!r}")
        if w.rows % 2:
            raise ValueError(f"act: the weight must hold [gate; up] (an even number of rows), "
                             f"got {w.rows} rows")
        n = w.rows // 2
    if norm is not None:
        if not isinstance(norm, tuple) or len(norm) != 2:
            raise ValueError("norm: expected (weight [K], eps)")
        nw, eps = norm
        if not isinstance(nw, torch.Tensor) or nw.shape != (w.cols,) or nw.device != x.device \
                or nw.dtype not in ACT_DTYPES or nw.stride(0) != 1:
            raise ValueError(f"norm: expected a contiguous float weight of shape ({w.cols},) on "
                             f"{x.device}")
        if not float(eps) >= 0:
            raise ValueError(f"norm: eps must be >= 0, got {eps}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != (x.shape[0], n) \
                or residual.dtype != x.dtype or residual.device != x.device \
                or residual.stride(1) != 1:
            raise ValueError(f"residual: expected {x.dtype} {(x.shape[0], n)} with unit column "
                             f"stride on {x.device}")
    return n


def linear(x: torch.Tensor, w: QTensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None, *, residual: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None, act: str | None = None,
           xq: tuple[int, int] | None = None) -> torch.Tensor:
    """x [T, w.cols] (f32/f16/bf16) @ W^T -> [T, w.rows] in x's dtype, plus bias [w.rows].

    `out` may be float32 for f16/bf16 x (the logits head): the GEMV (T <= MAX_T) then takes x
    as it is (on NVIDIA quantized to int8 per chunk for the quantized types, as llama.cpp's CUDA
    GEMV does) and stores float32 sums; larger T computes from x.float().

    Fusions (not with `out`), applied in this order:
    - norm = (weight [K], eps): x is first rms-normed (norm.rms_norm(x, weight, eps));
    - act ("silu" / "gelu_tanh"): W holds [gate; up] (2F rows) and the result is
      act(gate) * up [T, F] (activation.act_mul);
    - residual [T, N]: the result is residual + the product.
    Where `can_fuse` holds they run inside the GEMV (one launch; the normed x and the gate / up
    sums never leave registers, so they are not rounded to x's dtype); elsewhere the ops run one
    after another (xq: the chunking for rms_norm's / act_mul's X_PRE outputs, as the backend
    passes them), except that where only the norm cannot fuse (x pre-quantized by rms_norm, or
    the config's FUSE_NORM 0) the GEMV still takes the residual, and the activation unless x
    is pre-quantized (X_PRE: act_mul then writes the next GEMV's codes, or that GEMV quantizes
    act_mul's output; either way the numbers do not depend on FORGE_XQ_FUSE)."""
    if residual is not None or norm is not None or act is not None:
        if out is not None:
            raise ValueError("out: not supported with residual / norm / act")
        _check(x, w, bias, None)
        n = _check_fused(x, w, residual, norm, act)
        if x.stride(1) != 1:
            x = x.contiguous()
        gv, gemv, with_norm, x_pre = _fusion(x, w)
        if norm is not None and not with_norm:
            # x pre-quantized (rms_norm writes the codes), FUSE_NORM 0, or no GEMV: rms_norm
            # first; act stays a kernel of its own where the GEMVs read int8 codes (X_PRE: the
            # next one reads act_mul's, or quantizes act_mul's output itself: the same numbers)
            xn = rms_norm(x, norm[0], float(norm[1]), xq=xq)
            if act is None or not x_pre:
                return linear(xn, w, bias, residual=residual, act=act)
            y = act_mul_fused(linear(xn, w, bias), act, xq=xq)
            if residual is not None:
                y += residual
            return y
        if gemv:
            out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
            fused = {"NORM": norm is not None, "RESID": residual is not None,
                     "ACT": 0 if act is None else 1 + ACT_KINDS.index(act)}
            if norm is not None:
                fused.update(nw_ptr=norm[0], eps=float(norm[1]))
            if residual is not None:
                fused.update(res_ptr=residual, stride_r=residual.stride(0))
            _gemv(x, w, bias.contiguous() if bias is not None else None, out, gv, fused)
            return out
        y = linear(x, w, bias)
        if act is not None:
            y = act_mul_fused(y, act, xq=xq)
        if residual is not None:
            y += residual
        return y
    info = _check(x, w, bias, out)
    if out is not None and out.dtype != x.dtype:
        gv, gm = _configs(w.ggml_type, x.shape[0], w.rows, w.cols, False)
        if x.shape[0] > gv["MAX_T"]:
            if _takes_kq(x, gm):
                return kgemm.linear(x, w, bias, out,
                                    _kq_config(w.ggml_type, x.shape[0], w.rows, w.cols))
            if gm["DEQUANT_T"] == 0 or info.block == 1 or x.device.type != "cuda" \
                    or x.stride(1) != 1:
                return linear(x.float(), w, bias, out)
            # NVIDIA: the weight dequantized to x's dtype in pieces, cuBLAS with float32
            # results (a float32 dequantize + SGEMM moves twice the bytes at a third the rate)
            _dequant_matmul(x, w, out)
            if bias is not None:
                out += bias.float()
            return out
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
    gv, gm = _configs(w.ggml_type, T, N, K, x.dtype == torch.float32)
    if T <= gv["MAX_T"]:
        _gemv(x, w, bias, out, gv)
        return out
    if _takes_kq(x, gm):
        kgemm.linear(x, w, bias, out, _kq_config(w.ggml_type, T, N, K))
        return out
    if info.block == 1 and _float_matmul(x, w, out):
        pass
    elif x.dtype == torch.float32 or (gm["DEQUANT_T"] and T >= gm["DEQUANT_T"] and (
            gm["DEQUANT_EAGER"] or precompile.capturing(x.device))):
        # float32 activations always come here: an IEEE fp32 tl.dot spills registers, and the
        # tf32x3 one costs ~25-35 instructions per weight (compile report)
        _dequant_matmul(x, w, out)
    else:
        planes = plane_args(w)
        bm, bn, bs = gm["BLOCK_M"], gm["BLOCK_N"], gm["BLOCK_S"]
        nsub = triton.cdiv(K, info.sub)
        split, per = _split_k(nsub, bs, gm.get("SPLIT_K", 1))   # sub-blocks per split
        grid = (triton.cdiv(T, bm) * triton.cdiv(N, bn), split)
        dst = out if split == 1 else torch.empty((split, T, N), dtype=torch.float32, device=x.device)
        bias_arg = bias if bias is not None else out
        _linear_gemm_kernel[grid](
            x, *planes, bias_arg, dst, T, N, K, nsub, x.stride(0),
            out.stride(0) if split == 1 else N, per,
            TYPE=w.ggml_type, SUB=info.sub, BLOCK_M=bm, BLOCK_N=bn, BLOCK_S=bs,
            GROUP_M=gm["GROUP_M"], HAS_BIAS=bias is not None,
            DOT_UPCAST=_INTERPRET and x.dtype == torch.bfloat16, SPLIT=split > 1,
            num_warps=gm["num_warps"], num_stages=gm["num_stages"],
            **{k: gm[k] for k in ("waves_per_eu", "matrix_instr_nonkdim", "kpack") if k in gm})
        if split > 1:
            _reduce_splits(dst, bias, out, split)
        return out
    if bias is not None:
        out += bias.to(out.dtype)
    return out


# ------------------------------------------------------------------------------------------------
# COMPILE_SPECS


# Every type gets its batch-1 GEMV and its prefill GEMM compiled; the other variants (token
# blocks, split-K, fp16/fp32 activations, small-T and NVIDIA GEMM tiles) are compiled for a
# representative subset of types (they share every type-specific line with the ones above).
SPEC_FULL_TYPES = ("F16", "Q8_0", "Q4_K", "Q6_K")
# The GEMV with PREFETCH (not a launcher default: opt-in through tables), batch 1, bf16:
# (type, vendor, warp size, CUs, PREFETCH): NVIDIA's fenced and unfenced forms, one and two
# steps per iteration; AMD's fenced one, and the two-step forms.
SPEC_PREFETCH = (("Q4_K", "nvidia", 32, 132, 1), ("Q8_0", "nvidia", 32, 132, 1),
                 ("Q4_K", "nvidia", 32, 132, 2), ("Q8_0", "nvidia", 32, 132, 2),
                 ("Q4_K", "nvidia", 32, 132, 3), ("Q4_K", "nvidia", 32, 132, 4),
                 ("Q4_K", "amd", 64, 304, 1), ("Q4_K", "amd", 32, 96, 1),
                 ("Q4_K", "amd", 64, 304, 4), ("Q6_K", "amd", 32, 96, 3))
# The GEMV on pre-quantized x (X_PRE, NVIDIA, opt-in through tables): (type, PREFETCH, BLOCK_T).
SPEC_XPRE = (("Q4_K", 0, 1), ("Q4_K", 2, 1), ("Q8_0", 2, 1), ("Q6_K", 0, 1), ("Q4_K", 0, 2),
             ("Q5_K", 0, 1), ("Q4_0", 0, 1))
# The GEMV with L2 prefetch (L2PF, NVIDIA, opt-in through tables): (type, PREFETCH, X_PRE, L2PF).
SPEC_L2PF = (("Q4_K", 2, True, 2), ("Q8_0", 2, True, 2), ("F16", 0, False, 1),
             ("Q6_K", 0, True, 64))
# The GEMV with its fusions (NORM, RESID, ACT: the decode layer's norm + qkv, gate_up + act and
# residual-adding output projections; on AMD every type reads x as it is, so every type fuses):
# (type, vendor, warp size, CUs, NORM, RESID, ACT, BLOCK_T).
SPEC_FUSED = (("F16", "nvidia", 32, 132, True, False, 1, 1),
              ("F16", "nvidia", 32, 132, False, True, 0, 1),
              ("F16", "nvidia", 32, 132, True, False, 0, 2),
              ("Q4_K", "nvidia", 32, 132, False, True, 0, 1),
              ("Q8_0", "nvidia", 32, 132, False, True, 0, 1),
              ("Q4_K", "amd", 64, 304, True, False, 1, 1),
              ("Q4_K", "amd", 32, 96, True, True, 2, 1),
              ("Q6_K", "amd", 64, 304, False, True, 0, 1),
              ("Q8_0", "amd", 64, 304, True, False, 0, 2),
              ("F16", "amd", 32, 96, True, False, 1, 1))
# Integer arguments the JIT sees divisible by 16 at the specs' shapes (padded plane strides,
# model-sized rows and strides).
GEMV_DIVISIBLE = ("s_q", "s_qh", "s_sc", "s_d", "T", "N", "K", "NCH", "stride_x", "stride_xq",
                  "stride_xs", "stride_o", "CH_PER_SPLIT", "magic")
GEMM_DIVISIBLE = ("s_q", "s_qh", "s_sc", "s_d", "N", "K", "NSUB", "stride_x", "stride_o",
                  "S_PER_SPLIT")


def _gemv_signature(tid: int, act: str, split: bool, out: str | None = None) -> dict:
    ps = plane_signature(tid)
    q = "*fp32" if TYPES[tid].name == "F32" else "*i32"
    # (xq_ptr / xs_ptr are x again when X_PRE is off, unused: typed as X_PRE reads them so that
    # a table entry with X_PRE on compiles against any spec)
    sig = {"x_ptr": act, "xq_ptr": "*i32", "xs_ptr": "*fp32",
           "q_ptr": q, "qh_ptr": ps["qh_ptr"] if "qh" in TYPES[tid].planes else q,
           "sc_ptr": ps["sc_ptr"] if "sc" in TYPES[tid].planes else q,
           "d_ptr": ps["d_ptr"] if "d" in TYPES[tid].planes else q}
    sig.update({f"s_{p}": "i32" for p in PLANES})
    sig.update({"bias_ptr": act, "out_ptr": "*fp32" if split else (out or act), "T": "i32", "N": "i32",
                "K": "i32", "NCH": "i32", "stride_x": "i32", "stride_xq": "i32",
                "stride_xs": "i32", "stride_o": "i32",
                "CH_PER_SPLIT": "i32", "magic": "i32", "lanes": "i32", "zero": "i32",
                "res_ptr": act, "nw_ptr": "*fp32", "stride_r": "i32", "eps": "fp32"})
    return sig


def _compile_specs() -> list[dict]:
    specs = []
    strides = {f"s_{p}": "i32" for p in PLANES}
    for tid, info in TYPES.items():
        full = info.name in SPEC_FULL_TYPES
        V, E = gemv_shape(tid)
        # (activation, token rows, split-K, warp size, vendor, CUs, PREFETCH): each arch
        # family's default
        gemv_variants = [("*bf16", 1, False, 32, "nvidia", 132, 0),
                         ("*bf16", 1, False, 32, "amd", 96, 0),
                         ("*bf16", 1, False, 64, "amd", 304, 0)]
        if full or info.name == "Q5_K":
            gemv_variants += [("*bf16>fp32", 1, False, 32, "nvidia", 132, 0),   # the logits head
                              ("*bf16", 2, False, 32, "nvidia", 132, 0),
                              ("*bf16", 1, True, 32, "nvidia", 132, 0),
                              ("*fp16", 1, False, 32, "nvidia", 132, 0),
                              ("*fp32", 1, False, 32, "nvidia", 132, 0),
                              ("*bf16", 2, False, 64, "amd", 304, 0),
                              ("*bf16", 2, False, 32, "amd", 96, 0),
                              ("*fp32", 1, False, 64, "amd", 304, 0)]
        nofuse = (False, False, 0)
        gemv_variants = [v + (False, nofuse) for v in gemv_variants]
        gemv_variants += [("*bf16", 1, False, warp, vendor, cus, pf, False, nofuse)
                          for t, vendor, warp, cus, pf in SPEC_PREFETCH if t == info.name]
        gemv_variants += [("*bf16", bt, False, 32, "nvidia", 132, pf, True, nofuse)
                          for t, pf, bt in SPEC_XPRE if t == info.name]
        gemv_variants += [("*bf16", bt, False, warp, vendor, cus, 0, False, (nm, rs, ac))
                          for t, vendor, warp, cus, nm, rs, ac, bt in SPEC_FUSED if t == info.name]
        gemv_variants += [("*bf16", 1, False, 32, "nvidia", 132, pf, xpre, nofuse, l2)
                          for t, pf, xpre, l2 in SPEC_L2PF if t == info.name]
        for act, bt, split, warp, vendor, cus, pf, xpre, (nm, rs, ac), *l2pf in gemv_variants:
            l2 = l2pf[0] if l2pf else 0
            # NVIDIA's prefetching / pre-quantized forms as they launch on Hopper: with PDL
            pdl_on = vendor == "nvidia" and (pf > 0 or xpre or l2 > 0)
            act, _, out = act.partition(">")   # "*bf16>fp32": bf16 x, float32 out
            gv = gemv_default(tid, bt, 4096, 4096, cus=cus, warp=warp, vendor=vendor,
                              exact=act == "*fp32")
            x_int8 = bool(gv["X_INT8"])
            family = "cdna" if warp == 64 else "rdna" if vendor == "amd" else "nvidia"
            sig = _gemv_signature(tid, act, split, "*" + out if out else None)
            specs.append({
                "name": (f"_linear_gemv_kernel[{info.name},{act[1:]}{'>' + out if out else ''},T{bt}"
                         f"{',split' if split else ''}{f',prefetch{pf}' if pf else ''}"
                         f"{',xpre' if xpre else ''}{f',l2pf{l2}' if l2 else ''}"
                         f"{',pdl' if pdl_on else ''}"
                         f"{',norm' if nm else ''}{',resid' if rs else ''}"
                         f"{(',' + ACT_KINDS[ac - 1]) if ac else ''},{family}]"),
                "fn": _linear_gemv_kernel, "signature": sig, "derive": _derive_gemv,
                "constexprs": {"TYPE": tid, "V": V, "E": E, "BLOCK_T": bt,
                               "BLOCK_N": _act_block_n(gv["BLOCK_N"], ac),
                               "BLOCK_K": gv["BLOCK_K"],
                               "HAS_BIAS": not split, "SPLIT": split, "EVEN": True,
                               "X_PAIRS": act == "*bf16", "X_INT8": x_int8,
                               "ASM": vendor == "nvidia", "PREFETCH": pf, "X_PRE": xpre,
                               "PDL": pdl_on, "NORM": nm, "RESID": rs, "ACT": ac,
                               "L2PF": l2},
                "attrs": jit_attrs(_linear_gemv_kernel, sig, GEMV_DIVISIBLE),
                "num_warps": gv["num_warps"], "num_stages": gv["num_stages"],
                # informational: the arch family whose launcher default this is
                "vendors": ("nvidia",) if vendor == "nvidia" else ("amd",),
            })
        # (float weights with matching activations never reach the GEMM: torch.matmul)
        gemm_variants = [("*bf16", 512, "amd"), ("*bf16", 32, "nvidia")]
        if full:
            gemm_variants += [("*fp16", 512, "amd"), ("*bf16", 16, "amd"),
                              ("*bf16", 512, "nvidia"), ("*bf16", 64, "nvidia")]
        for act, T, vendor in gemm_variants:
            gm = gemm_default(tid, T, 4096, 4096, vendor)
            split = T <= 32   # batch decode: the split-K form (float32 partials, no bias)
            sig = {"x_ptr": act, **plane_signature(tid), **strides, "bias_ptr": act,
                   "out_ptr": "*fp32" if split else act, "T": "i32", "N": "i32", "K": "i32",
                   "NSUB": "i32", "stride_x": "i32", "stride_o": "i32", "S_PER_SPLIT": "i32"}
            specs.append({
                "name": (f"_linear_gemm_kernel[{info.name},{act[1:]},T{T}"
                         f"{',split' if split else ''},{vendor}]"),
                "fn": _linear_gemm_kernel, "signature": sig,
                "constexprs": {"TYPE": tid, "SUB": info.sub, "BLOCK_M": gm["BLOCK_M"],
                               "BLOCK_N": gm["BLOCK_N"], "BLOCK_S": gm["BLOCK_S"],
                               "GROUP_M": gm["GROUP_M"], "HAS_BIAS": not split,
                               "DOT_UPCAST": False, "SPLIT": split},
                "attrs": jit_attrs(_linear_gemm_kernel, sig, GEMM_DIVISIBLE),
                "num_warps": gm["num_warps"], "num_stages": gm["num_stages"],
                # informational: the launcher default picks these tiles on this vendor
                "vendors": ("nvidia",) if vendor == "nvidia" else ("amd", "nvidia"),
            })
    for act, (V, E) in (("*bf16", (4, 8)), ("*bf16", (4, 4)), ("*fp16", (4, 8))):
        sig = {"x_ptr": act, "xq_ptr": "*i32", "xs_ptr": "*fp32", "K": "i32", "NCH": "i32",
               "stride_x": "i32", "stride_xq": "i32", "stride_xs": "i32"}
        specs.append({
            "name": f"_xquant_kernel[{act[1:]},E{E}]", "fn": _xquant_kernel, "signature": sig,
            "constexprs": {"V": V, "E": E, "BB": 128, "EVEN": True, "X_PAIRS": act == "*bf16",
                           "PDL": True},
            "attrs": jit_attrs(_xquant_kernel, sig, ("K", "NCH", "stride_x", "stride_xq",
                                                     "stride_xs")),
            "num_warps": 4, "num_stages": 1, "vendors": ("nvidia",),
        })
    for act in ("*bf16", "*fp16", "*fp32"):
        sig = {"part_ptr": "*fp32", "bias_ptr": act, "out_ptr": act, "TN": "i32", "N": "i32",
               "stride_o": "i32"}
        specs.append({
            "name": f"_linear_splitk_reduce_kernel[{act[1:]}]",
            "fn": _linear_splitk_reduce_kernel, "signature": sig,
            "constexprs": {"SPLIT_K": 4, "HAS_BIAS": True, "BLOCK": 1024, "PDL": False},
            "attrs": jit_attrs(_linear_splitk_reduce_kernel, sig, ("TN", "N", "stride_o")),
            "num_warps": 4, "num_stages": 1,
        })
    return specs


COMPILE_SPECS: list[dict] = _compile_specs()
