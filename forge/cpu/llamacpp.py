"""llama.cpp's CPU arithmetic, reproduced in NumPy: `NumpyBackend(numerics="llamacpp")`.

forge/cpu/<op>.py compute in plain float32 and are tested against float64 references. llama.cpp's
CPU backend (ggml-cpu, x86 AVX2/FMA/F16C build) rounds differently, and the differences matter:
its matmuls quantize the activations to 8 bits first, so two runs that differ by one ulp upstream
can round an activation to different integers, and that difference grows layer by layer until the
logits differ by ~0.3 (as far apart as plain float32 is). Greedy outputs then part at near-ties.
The only way to follow llama.cpp token for token is to reproduce its arithmetic bit for bit. This
module does that for the ops and weight types below; each was checked bit-exact against tensors
dumped from llama.cpp (llama-cpp-python 0.3.36) through its eval callback.

Matmul (`linear`): the activation rows are quantized to the weight type's vec_dot type (Q8_0 /
Q8_1 blocks of 32, Q8_K blocks of 256, as ggml's quantize_row_*), the integer dot products are
exact, and what remains is the order of the float operations, which depends on the kernel:
- Q4_1, Q5_1, Q5_0, Q8_0 ("b32" kernels: ggml_vec_dot_*_q8_* and llamafile's tinyBLAS_Q0, which
  agree): 8 float lanes, lane l holds elements 4l..4l+3 of each 32-block;
  lane = fma(d_w * d_x, int_sum, lane) block after block; result = hsum8(lanes)
  (+ the sum of m_w * s_x over blocks for Q4_1/Q5_1).
- Q6_K (ggml_vec_dot_q6_K_q8_K): the same 8 lanes over 256-blocks, int lane sums of
  scale * (q + 32) * x minus 32 * scale * bsums paired by lane, fma with d_x * d_w, hsum8.
  Calls of >= 8 rows take ggml's tiled K-quant matmul instead (on by default): per 256-block,
  res = d_w * float(int_sum) (minus dmin_w * float(min_sum) for types with minimums, fused),
  y = fma(res, d_x, y).
- Q4_K: with rows % 8 == 0 ggml repacks it (block_q4_Kx8) and uses one float chain per output:
  fma(int_sum, d_w * d_x, acc) and the same for the minimums, acc - acc_min. Rows of a call
  in groups of four (the first T - T % 4) go through its gemm, which adds every 64 values, the
  others through its gemv, which adds every 256: a row's bits depend on its place in the batch,
  exactly as in llama.cpp. Otherwise ggml_vec_dot_q4_K_q8_K (8 lanes + 4 lanes for the
  minimums) below 8 rows and the tiled matmul from 8 rows, as for Q6_K.
- Other types (Q4_0, IQ4_NL, MXFP4 are repacked on AVX2; Q2_K, Q3_K, Q5_K, IQ*, F16, BF16, F32)
  and the projection to the vocabulary: the activation is rounded the same way, then
  dequantized-activation @ dequantized-weight runs in float32 BLAS ("fake quantization"). That
  matches llama.cpp to ~1e-6 relative, not to the bit. For the vocabulary projection this is
  deliberate: its output (the logits) is never quantized again, and the bit-exact chain would cost
  ~10x more on a 256k vocabulary.
Other ops: RMSNorm (sum of float32 squares in double, mean rounded to float, 1/sqrtf), RoPE (the
cos/sin cache built by ggml's float32 recurrence with the C library's powf/sinf/cosf, rotation with
fused multiply-adds), attention over an F32 KV cache without flash attention (K.Q by
ggml_vec_dot_f32's 4x8 accumulators, softmax with ggml_v_expf and a double sum, P.V by tinyBLAS
(8 lanes) when a sequence has >= 2 queries, else ggml_vec_dot_f32), SwiGLU (ggml_v_silu) and
GELU-tanh (ggml's fp16 lookup table). Not bit-exact: an F16 KV cache, flash attention, attention
logit softcapping (tanh rounded from float64, not the C library's tanhf), YaRN RoPE scaling.
All of this is llama.cpp's x86-64 AVX2/FMA/F16C build (its ARM or AVX-512 kernels add in other
orders), as in llama-cpp-python 0.3.36.

Everything runs vectorized; a fused multiply-add is computed exactly in float64 and rounded once
more to float32 (a double rounding that differs from a true FMA with probability ~2^-29).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from forge.cpu.activation import act_mul as _act_mul
from forge.cpu.attention import check_args as _check_attention_args
from forge.cpu.norm import norm_input
from forge.cpu.rope import write_kv
from forge.cpu.matmul import linear as _linear
from forge.runtime.backend import QTensor, RopeSpec

QK8 = 32                       # Q8_0 / Q8_1 block
QKK = 256                      # Q8_K block
_F32 = np.float32
_EXACT_F32 = float(1 << 24)    # integers below this add exactly in float32

_Q8_0_USERS = ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4")
_Q8_1_USERS = ("Q4_1", "Q5_1")
_Q8_K_USERS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
               "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0")


def _types(names) -> frozenset[int]:
    return frozenset(int(Q[n]) for n in names if n in Q.__members__)


Q8_0_USERS = _types(_Q8_0_USERS)
Q8_1_USERS = _types(_Q8_1_USERS)
Q8_K_USERS = _types(_Q8_K_USERS)


def vec_dot_type(ggml_type: int) -> str:
    """The activation format ggml's CPU matmul converts to for a weight of `ggml_type`:
    "q8_0", "q8_1", "q8_k", "f16", "bf16" or "f32" (also for types not emulated)."""
    t = int(ggml_type)
    if t in Q8_0_USERS:
        return "q8_0"
    if t in Q8_1_USERS:
        return "q8_1"
    if t in Q8_K_USERS:
        return "q8_k"
    if t == int(Q.F16):
        return "f16"
    if t == int(Q.BF16):
        return "bf16"
    return "f32"


# ---------------------------------------------------------------------------------------------
# scalar pieces: fma, reductions, the C library's float functions
# ---------------------------------------------------------------------------------------------

def fma32(a, b, c) -> np.ndarray:
    """float32 fma(a, b, c): the product of two float32 is exact in float64."""
    r = np.multiply(a, b, dtype=np.float64)
    r += c
    return r.astype(_F32)


def hsum8(acc: np.ndarray) -> np.ndarray:
    """ggml's hsum_float_8 / tinyBLAS hsum over the last axis (8 lanes)."""
    r = acc[..., :4] + acc[..., 4:]
    r = r[..., :2] + r[..., 2:]
    return r[..., 0] + r[..., 1]


def _reduce_4x8(acc: np.ndarray) -> np.ndarray:
    """GGML_F32_VEC_REDUCE on AVX: acc [..., 4, 8] -> [...]."""
    a = acc[..., 0, :] + acc[..., 2, :]
    b = acc[..., 1, :] + acc[..., 3, :]
    a = a + b
    t0 = a[..., :4] + a[..., 4:]
    return (t0[..., 0] + t0[..., 1]) + (t0[..., 2] + t0[..., 3])


def _load_libm():
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        lib = None
    if lib is None:
        return None
    for fn in ("sinf", "cosf", "tanhf", "expf"):
        f = getattr(lib, fn)
        f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    lib.powf.restype, lib.powf.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    return lib


_LIBM = _load_libm()
_NP_FUNCS = {"sinf": np.sin, "cosf": np.cos, "tanhf": np.tanh, "expf": np.exp}


def libm(fn: str, x) -> np.ndarray:
    """The C library's float function `fn` (sinf, cosf, tanhf, expf) elementwise, as ggml calls
    it. Without a loadable libm: the correctly rounded value (float64, rounded once)."""
    x = np.asarray(x, _F32)
    if _LIBM is None:
        with np.errstate(all="ignore"):
            return _NP_FUNCS[fn](x.astype(np.float64)).astype(_F32)
    f = getattr(_LIBM, fn)
    out = np.fromiter((f(v) for v in x.ravel().tolist()), _F32, count=x.size)
    return out.reshape(x.shape)


def powf(x: float, y: float) -> np.float32:
    if _LIBM is None:
        return _F32(math.pow(float(_F32(x)), float(_F32(y))))
    return _F32(_LIBM.powf(float(_F32(x)), float(_F32(y))))


def _hexf(h: str) -> np.float32:
    return _F32(float.fromhex(h))


_EXP_C = [_hexf(h) for h in ("0x1.8p23", "0x1.715476p+0", "0x1.7f7d1cp-20", "0x1.62e4p-1",
                             "0x1.0e4020p-7", "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2",
                             "0x1.ffffecp-1")]


def v_expf(x: np.ndarray) -> np.ndarray:
    """ggml_v_expf (AVX2+FMA): exp of float32 x, bit for bit."""
    r, log2e, ln2lo, ln2hi, c5, c4, c3, c2, c1 = _EXP_C
    x = np.asarray(x, _F32)
    with np.errstate(invalid="ignore", over="ignore"):
        z = fma32(x, log2e, r)
        n = z - r
        b = fma32(-n, ln2lo, fma32(-n, ln2hi, x))
        e = z.view(np.int32) << np.int32(23)
        k = (e + _F32(1).view(np.int32)).view(_F32)
        u = b * b
        j = fma32(fma32(fma32(c5, b, c4), u, fma32(c3, b, c2)), u, c1 * b)
        res = fma32(j, k, k)
        c = np.abs(n) > _F32(126)
        if c.any():
            g = np.where(n <= 0, np.int32(-0x7E000000), np.int32(0))      # 0x82000000
            s1 = (g + np.int32(0x7F000000)).view(_F32)
            s2 = (e - g).view(_F32)
            big = np.abs(n) > _F32(192)
            slow = np.where(big, s1 * s1, fma32(s2, j, s2) * s1)
            res = np.where(c, slow, res)
    return res.astype(_F32, copy=False)


# ---------------------------------------------------------------------------------------------
# activation quantization (ggml quantize_row_q8_0 / q8_1 (AVX2), quantize_row_q8_K_ref)
# ---------------------------------------------------------------------------------------------

def _blocks(x: np.ndarray, block: int, name: str = "x") -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"{name}: expected 2-D [T, K], got shape {tuple(x.shape)}")
    if x.shape[1] % block:
        raise ValueError(f"{name}: row length {x.shape[1]} is not a multiple of the block size {block}")
    x = np.ascontiguousarray(x, dtype=_F32)
    return x.reshape(x.shape[0], x.shape[1] // block, block)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] -> (q [T, K/32, 32] float32 integers, d [T, K/32] = amax/127 (float32),
    dh [T, K/32] = d rounded to fp16). q = round_half_even(x * (127/amax))."""
    xb = _blocks(x, QK8)
    amax = np.abs(xb).max(axis=-1)
    d = amax / _F32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, _F32(127.0) / amax, _F32(0.0)).astype(_F32)
    q = xb * inv[..., None]
    np.rint(q, out=q)
    return q, d, d.astype(np.float16).astype(_F32)


def quantize_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] -> (q, dh, s): Q8_0's q and fp16 scale, and s = fp16(d * sum(q)), d unrounded."""
    q, d, dh = quantize_q8_0(x)
    s = (d * q.sum(axis=-1, dtype=_F32)).astype(np.float16).astype(_F32)
    return q, dh, s


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [T, K] -> (q [T, K/256, 256] float32 integers, d [T, K/256] float32). The first value of
    largest magnitude `max` gives iscale = -127/max; q = min(127, rint(iscale*x)); d = 1/iscale."""
    xb = _blocks(x, QKK)
    idx = np.abs(xb).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(xb, idx, axis=-1)[..., 0]
    nz = mx != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(nz, _F32(-127.0) / np.where(nz, mx, _F32(1.0)), _F32(0.0)).astype(_F32)
        d = np.where(nz, _F32(1.0) / np.where(nz, iscale, _F32(1.0)), _F32(0.0)).astype(_F32)
    q = xb * iscale[..., None]
    np.rint(q, out=q)
    np.minimum(q, _F32(127.0), out=q)
    return q, d


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> float32 holding the nearest bf16 (ties to even; NaN stays NaN)."""
    x = np.ascontiguousarray(x, dtype=_F32)
    u = x.view(np.uint32)
    r = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    r = np.where(np.isnan(x), u | np.uint32(0x00400000), r).astype(np.uint32)
    return r.view(_F32)


def activation(x: np.ndarray, ggml_type: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The activation rows as llama.cpp's matmul sees them for a weight of `ggml_type`:
    (float32 [T, K] dequantized values, and for Q8_1 the per-block term s - dh*sum(q) [T, K/32]
    that multiplies the weight's block minimums; None otherwise)."""
    kind = vec_dot_type(ggml_type)
    t, k = x.shape
    if kind == "q8_0":
        q, _, dh = quantize_q8_0(x)
        return (q * dh[..., None]).reshape(t, k), None
    if kind == "q8_1":
        q, dh, s = quantize_q8_1(x)
        corr = s - dh * q.sum(axis=-1, dtype=_F32)
        return (q * dh[..., None]).reshape(t, k), corr
    if kind == "q8_k":
        q, d = quantize_q8_k(x)
        return (q * d[..., None]).reshape(t, k), None
    if kind == "f16":
        return np.asarray(x, _F32).astype(np.float16).astype(_F32), None
    if kind == "bf16":
        return round_bf16(x), None
    return np.asarray(x, _F32), None


# ---------------------------------------------------------------------------------------------
# weights: GGUF blocks -> integer quants and scales in the layout each kernel emulation wants
# ---------------------------------------------------------------------------------------------

def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(_F32)


def _blocks_of(raw: np.ndarray, ggml_type: int, rows: int, cols: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[Q(int(ggml_type))]
    if cols % block:
        raise ValueError(f"cols: {cols} is not a multiple of the {Q(int(ggml_type)).name} block {block}")
    b = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if b.size != rows * (cols // block) * size:
        raise ValueError(f"raw: expected {rows * (cols // block) * size} bytes, got {b.size}")
    return b.reshape(rows, cols // block, size)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32]: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int16)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """[..., 4] bytes (little-endian u32) -> [..., 32] bit j << 4."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits.astype(np.int16) << 4


def block_mins(ggml_type: int, raw: np.ndarray, rows: int, cols: int) -> np.ndarray | None:
    """The per-block minimum m of a Q4_1/Q5_1 weight: float32 [rows, cols/32]; None otherwise."""
    t = int(ggml_type)
    if t not in Q8_1_USERS:
        return None
    return _f16(_blocks_of(raw, t, rows, cols)[..., 2:4])


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte scales [..., 12] -> 6-bit scales and mins [..., 8] each."""
    s = s.astype(np.int16)
    sc = np.empty(s.shape[:-1] + (8,), np.int16)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _lane_major(w: np.ndarray) -> np.ndarray:
    """[R, nb, 256] per-element integers -> [nb * 8 lanes, 32, R]: lane l of a 256-block holds
    elements 32m + 4l + r (m < 8, r < 4), the elements ggml's AVX2 K-quant dot adds in lane l."""
    r, nb, _ = w.shape
    w = w.reshape(r, nb, 8, 8, 4).transpose(1, 3, 2, 4, 0)      # [nb, l, m, r, R]
    return np.ascontiguousarray(w.reshape(nb * 8, 32, r), dtype=_F32)


@dataclass(slots=True)
class Packed:
    """A weight ready for a bit-exact kernel emulation.

    q holds integers as float32 (as much memory as a dequantized float32 copy, which the backend
    then drops; no conversion per call), output rows last so that x @ q is a plain matmul.
    kernel "b32": q [K/4, 4, R] (4-element lane groups), d [R, K/32], m mins or None.
    kernel "q6k": q [nb*8, 32, R] = scale * (q + 32) by lane, d [R, nb], sc int16 [R, nb, 16].
    kernel "q4k": q [nb*4, 64, R] = scale * q by 64-chunk (repacked gemm/gemv), d, m = dmin,
                  sc = mins int16 [R, nb, 8].
    kernel "q4kv": q [nb*8, 32, R] by lane (ggml_vec_dot_q4_K_q8_K), d, m = dmin, sc = mins.
    """

    kernel: str
    rows: int
    cols: int
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None = None
    sc: np.ndarray | None = None


EXACT_TYPES = frozenset(int(Q[n]) for n in ("Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"))


def pack(ggml_type: int, raw: np.ndarray, rows: int, cols: int) -> Packed | None:
    """GGUF blocks of a [rows, cols] weight -> a Packed kernel weight, or None if its type has no
    bit-exact emulation (see EXACT_TYPES)."""
    t = int(ggml_type)
    if t not in EXACT_TYPES:
        return None
    b = _blocks_of(raw, t, rows, cols)
    d = _f16(b[..., 0:2]) if t != int(Q.Q6_K) else _f16(b[..., 208:210])
    if t in (int(Q.Q4_1), int(Q.Q5_0), int(Q.Q5_1), int(Q.Q8_0)):
        if t == int(Q.Q8_0):
            q = b[..., 2:].view(np.int8).astype(np.int16)
        elif t == int(Q.Q4_1):
            q = _nibbles(b[..., 4:20])
        elif t == int(Q.Q5_0):
            q = (_nibbles(b[..., 6:22]) | _high_bits(b[..., 2:6])) - 16
        else:
            q = _nibbles(b[..., 8:24]) | _high_bits(b[..., 4:8])
        m = _f16(b[..., 2:4]) if t in Q8_1_USERS else None
        q = q.reshape(rows, cols // 4, 4).transpose(1, 2, 0)
        return Packed("b32", rows, cols, np.ascontiguousarray(q, dtype=_F32), d, m)
    nb = cols // QKK
    if t == int(Q.Q6_K):
        ql, qh = b[..., :128].astype(np.int16), b[..., 128:192].astype(np.int16)
        sc = b[..., 192:208].view(np.int8).astype(np.int16)
        qu = np.empty((rows, nb, 256), np.int16)              # q + 32, in 0..63
        for h in range(2):
            lo, hi = ql[..., 64 * h:64 * h + 64], qh[..., 32 * h:32 * h + 32]
            base = 128 * h
            qu[..., base:base + 32] = (lo[..., :32] & 15) | ((hi & 3) << 4)
            qu[..., base + 32:base + 64] = (lo[..., 32:] & 15) | (((hi >> 2) & 3) << 4)
            qu[..., base + 64:base + 96] = (lo[..., :32] >> 4) | (((hi >> 4) & 3) << 4)
            qu[..., base + 96:base + 128] = (lo[..., 32:] >> 4) | (((hi >> 6) & 3) << 4)
        w = qu * np.repeat(sc, 16, axis=-1)
        return Packed("q6k", rows, cols, _lane_major(w), d, None, sc)
    # Q4_K
    dmin = _f16(b[..., 2:4])
    sc, mn = _k_scales_mins(b[..., 4:16])
    qs = b[..., 16:].astype(np.int16).reshape(rows, nb, 4, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(rows, nb, 256)
    w = q * np.repeat(sc, 32, axis=-1)
    if rows % 8 == 0:                 # ggml repacks it (block_q4_Kx8) on AVX2
        w = w.reshape(rows, nb * 4, 64).transpose(1, 2, 0)
        return Packed("q4k", rows, cols, np.ascontiguousarray(w, dtype=_F32), d, dmin, mn)
    return Packed("q4kv", rows, cols, _lane_major(w), d, dmin, mn)


def concat_packed(parts: list[Packed]) -> Packed:
    """Packed weights with the same kernel and cols, stacked along rows (as Backend.fuse_rows)."""
    p0 = parts[0]
    if len({fusable_key(p) for p in parts}) != 1:
        raise ValueError("parts: kernel, cols and the presence of mins must match")
    cat = lambda name, axis: (None if getattr(p0, name) is None
                              else np.concatenate([getattr(p, name) for p in parts], axis=axis))
    return Packed(p0.kernel, sum(p.rows for p in parts), p0.cols, cat("q", 2), cat("d", 0),
                  cat("m", 0), cat("sc", 0))


def fusable_key(p: Packed) -> tuple:
    """Packed weights with equal keys compute alike and can be stacked by concat_packed."""
    return (p.kernel, p.cols, p.m is None, p.sc is None)


# ---------------------------------------------------------------------------------------------
# matmul kernels
# ---------------------------------------------------------------------------------------------

def _lane_sums(wq: np.ndarray, xq: np.ndarray, bound: float) -> np.ndarray:
    """Exact integer sums: xq [B, T, k] @ wq [B, k, R] (float32 integers) -> [B, T, R], float32
    when one float32 matmul is exact, else float64. Float32 BLAS is exact while every partial sum
    stays below 2^24: k is split until `bound` (a bound on |w|*|x|) times the piece length is
    below it, and the pieces are added in float64."""
    k = wq.shape[1]
    piece = k
    while piece > 1 and bound * piece >= _EXACT_F32:
        piece //= 2
    xq = np.asarray(xq, _F32)
    if piece == k:
        return np.matmul(xq, wq)
    out = None
    for a in range(0, k, piece):
        part = np.matmul(xq[..., a:a + piece], wq[:, a:a + piece]).astype(np.float64)
        out = part if out is None else out + part
    return out


def _chain(lanes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """acc = fma(scale[b], lanes[b], acc) for b in order (float32 rounding after each step).
    lanes [nb, ...] integers (any float dtype), scale broadcastable to lanes -> acc [...]."""
    shape = np.broadcast_shapes(lanes.shape, scale.shape)[1:]
    acc = np.zeros(shape, _F32)
    tmp = np.empty(shape, np.float64)
    for b in range(lanes.shape[0]):
        np.multiply(lanes[b], scale[b], out=tmp, dtype=np.float64)       # exact product
        np.add(tmp, acc, out=acc, casting="unsafe")                      # float64 sum, rounded once
    return acc


def _scales(dx: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """dx [T, nb] * dw [R, nb] -> [nb, T, R] float32 (a product of two floats: commutative)."""
    return dx.T[:, :, None] * dw.T[:, None, :]


def _b32(x: np.ndarray, p: Packed, n_call: int) -> np.ndarray:
    t = x.shape[0]
    nb = p.cols // QK8
    if p.m is not None:
        q, dx, s = quantize_q8_1(x)
    else:
        q, _, dx = quantize_q8_0(x)
    xg = q.reshape(t, p.cols // 4, 4).transpose(1, 0, 2)                   # [K/4, T, 4]
    lanes = _lane_sums(p.q, xg, 128.0 * 127.0).reshape(nb, 8, t, p.rows)
    acc = _chain(lanes, _scales(dx, p.d)[:, None])                          # [8, T, R]
    y = hsum8(np.moveaxis(acc, 0, -1))                                      # [T, R]
    if p.m is not None:
        summs = np.zeros((t, p.rows), _F32)
        sm = _scales(s, p.m)                                                # exact products
        for b in range(nb):
            summs += sm[b]
        y = y + summs
    return y


def _q8k_parts(x: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, d = quantize_q8_k(x)                                                # [T, nb, 256], [T, nb]
    bsums16 = q.reshape(q.shape[0], nb, 16, 16).sum(-1)                     # [T, nb, 16]
    return q, d, bsums16


def _lane_major_x(q: np.ndarray) -> np.ndarray:
    """[T, nb, 256] -> [nb*8, T, 32] in the element order of _lane_major."""
    t, nb, _ = q.shape
    q = q.reshape(t, nb, 8, 8, 4).transpose(1, 3, 0, 2, 4)
    return q.reshape(nb * 8, t, 32)


TILED_MIN_ROWS = 8               # ggml's tiled K-quant matmul takes calls of >= 8 rows


def _tiled(s1: np.ndarray, dw: np.ndarray, dx: np.ndarray, s2: np.ndarray | None = None,
           dmin: np.ndarray | None = None) -> np.ndarray:
    """ggml's tiled K-quant matmul (tiled-kernel.cpp, AVX2), per output and 256-block b:
    res = d_w * float(s1) (- dmin_w * float(s2), fused); y = fma(res, d_x, y).
    s1, s2 [nb, T, R] exact integers; dw, dmin [R, nb]; dx [T, nb]."""
    res = dw.T[:, None, :] * s1.astype(_F32)                               # [nb, T, R], rounded
    if s2 is not None:
        res = fma32(-dmin.T[:, None, :], s2.astype(_F32), res)
    return _chain(res, dx.T[:, :, None])


def _q6k(x: np.ndarray, p: Packed, n_call: int) -> np.ndarray:
    t, nb = x.shape[0], p.cols // QKK
    q, dx, bs16 = _q8k_parts(x, nb)
    if n_call >= TILED_MIN_ROWS:
        # one exact integer per 256-block: sum(scale * q * x) with q = (q + 32) - 32
        main = _lane_sums(p.q, _lane_major_x(q), 128.0 * 63.0 * 127.0).reshape(nb, 8, t, p.rows)
        off = 32.0 * (bs16.astype(np.float64).transpose(1, 0, 2)[:, :, None, :]
                      * p.sc.astype(np.float64).transpose(1, 0, 2)[:, None, :, :]).sum(-1)
        return _tiled(main.sum(1, dtype=np.float64) - off, p.d, dx)
    main = _lane_sums(p.q, _lane_major_x(q), 128.0 * 63.0 * 127.0).reshape(nb, 8, t, p.rows)
    # 32 * (bsum[2l] * sc[2l] + bsum[2l+1] * sc[2l+1]) for lane l (ggml's q8sclsub)
    bs = bs16.astype(np.float64).transpose(1, 0, 2)[:, :, None, :]         # [nb, T, 1, 16]
    sc = p.sc.astype(np.float64).transpose(1, 0, 2)[:, None, :, :]         # [nb, 1, R, 16]
    off = 32.0 * (bs[..., 0::2] * sc[..., 0::2] + bs[..., 1::2] * sc[..., 1::2])   # [nb, T, R, 8]
    lanes = (main - off.transpose(0, 3, 1, 2)).astype(_F32)                 # [nb, 8, T, R]
    acc = _chain(lanes, _scales(dx, p.d)[:, None])
    return hsum8(np.moveaxis(acc, 0, -1))


def _q4k_min_pairs(p: Packed, q: np.ndarray, nb: int) -> np.ndarray:
    """mins x bsums of 32-element sub-blocks, added in pairs (sub-blocks 2j and 2j+1, as ggml's
    madd does) -> [nb, T, R, 4] exact integers (float64)."""
    bs = q.reshape(q.shape[0], nb, 8, 32).sum(-1).astype(np.float64).transpose(1, 0, 2)[:, :, None, :]
    mn = p.sc.astype(np.float64).transpose(1, 0, 2)[:, None]               # [nb, 1, R, 8]
    return bs[..., 0::2] * mn[..., 0::2] + bs[..., 1::2] * mn[..., 1::2]


def _q4k_repacked(x: np.ndarray, p: Packed, n_call: int) -> np.ndarray:
    t, nb = x.shape[0], p.cols // QKK
    q, dx, _ = _q8k_parts(x, nb)
    xq = q.reshape(t, nb * 4, 64).transpose(1, 0, 2)                        # [nb*4, T, 64]
    iacc = _lane_sums(p.q, xq, 945.0 * 127.0).reshape(nb, 4, t, p.rows)
    mins = _q4k_min_pairs(p, q, nb).transpose(0, 3, 1, 2)                   # [nb, 4, T, R]
    ds = _scales(dx, p.d)                                                   # [nb, T, R] d_w * d_x
    dm = _scales(dx, p.m)                                                   # dmin_w * d_x
    n_gemm = n_call - n_call % 4         # rows [0, n_gemm) go through ggml's gemm, the rest gemv
    assert t == n_call, "the repacked Q4_K kernel sees the whole call"
    y = np.empty((t, p.rows), _F32)
    if n_gemm:                           # gemm: one fma per 64 values (two sub-blocks)
        g = slice(0, n_gemm)
        acc = _chain(iacc[:, :, g].reshape(nb * 4, n_gemm, p.rows), np.repeat(ds[:, g], 4, axis=0))
        accm = _chain(mins[:, :, g].reshape(nb * 4, n_gemm, p.rows), np.repeat(dm[:, g], 4, axis=0))
        y[g] = acc - accm
    if n_gemm < t:                       # gemv: one fma per 256 values (sums exact in float64)
        g = slice(n_gemm, t)
        def whole(a):
            return (a[:, 0, g].astype(np.float64) + a[:, 1, g]) + (a[:, 2, g].astype(np.float64) + a[:, 3, g])

        y[g] = _chain(whole(iacc), ds[:, g]) - _chain(whole(mins), dm[:, g])
    return y


def _q4k_vec_dot(x: np.ndarray, p: Packed, n_call: int) -> np.ndarray:
    t, nb = x.shape[0], p.cols // QKK
    q, dx, _ = _q8k_parts(x, nb)
    lanes = _lane_sums(p.q, _lane_major_x(q), 945.0 * 127.0).reshape(nb, 8, t, p.rows)
    if n_call >= TILED_MIN_ROWS:
        s2 = _q4k_min_pairs(p, q, nb).sum(-1).astype(np.float64)           # [nb, T, R]
        return _tiled(lanes.sum(1, dtype=np.float64), p.d, dx, s2, p.m)
    acc = _chain(lanes.astype(_F32), _scales(dx, p.d)[:, None])              # [8, T, R]
    prod = _q4k_min_pairs(p, q, nb)                                         # 4 lanes of mins
    dmin = -_scales(dx, p.m)                                                # -(d_x * dmin_w)
    accm = _chain(prod.astype(_F32), dmin[..., None])                       # [T, R, 4]
    m2 = accm[..., :2] + accm[..., 2:]
    return hsum8(np.moveaxis(acc, 0, -1)) + (m2[..., 0] + m2[..., 1])


_KERNELS = {"b32": _b32, "q6k": _q6k, "q4k": _q4k_repacked, "q4kv": _q4k_vec_dot}
CHUNK_ELEMS = 1 << 22            # bound on rows * R * K / 4 per kernel call (the lane sums' size)


def linear_exact(x: np.ndarray, w: QTensor, p: Packed, bias: np.ndarray | None = None) -> np.ndarray:
    """x [T, w.cols] -> [T, w.rows], bit for bit as llama.cpp's CPU matmul (see the module doc)."""
    if x.ndim != 2 or x.shape[1] != w.cols:
        raise ValueError(f"x: expected shape (T, {w.cols}), got {tuple(x.shape)}")
    if (p.rows, p.cols) != (w.rows, w.cols):
        raise ValueError(f"p: packed shape {(p.rows, p.cols)} does not match w {tuple(w.shape)}")
    x = np.ascontiguousarray(x, dtype=_F32)
    kernel = _KERNELS[p.kernel]
    t = x.shape[0]
    step = max(1, CHUNK_ELEMS // max(1, p.rows * p.cols // 4))
    # ggml picks a K-quant kernel by the row count of the whole call (tiled from 8 rows; the
    # repacked Q4_K's gemm/gemv split by row index), so chunks are told the call's row count
    if p.kernel == "q4k" or t <= step:
        y = kernel(x, p, t)
    else:
        y = np.concatenate([kernel(x[i:i + step], p, t) for i in range(0, t, step)])
    if bias is not None:
        if bias.shape != (w.rows,):
            raise ValueError(f"bias: expected shape ({w.rows},), got {tuple(bias.shape)}")
        y = y + bias
    return y.astype(_F32, copy=False)


def linear_fast(x: np.ndarray, w: QTensor, bias: np.ndarray | None = None,
                mins: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's activation rounding, then float32 BLAS on the dequantized values (~1e-6 of
    llama.cpp). `mins` [w.rows, w.cols/32]: the block minimums, required for Q4_1/Q5_1."""
    if x.ndim != 2 or x.shape[1] != w.cols:
        raise ValueError(f"x: expected shape (T, {w.cols}), got {tuple(x.shape)}")
    xq, corr = activation(x, w.ggml_type)
    y = _linear(xq, w)
    if corr is not None:
        if mins is None or mins.shape != (w.rows, w.cols // QK8):
            raise ValueError(f"mins: a {Q(w.ggml_type).name} weight needs its block minimums "
                             f"[{w.rows}, {w.cols // QK8}], got "
                             f"{None if mins is None else tuple(mins.shape)}")
        y += corr @ mins.T
    if bias is not None:
        if bias.shape != (w.rows,):
            raise ValueError(f"bias: expected shape ({w.rows},), got {tuple(bias.shape)}")
        y += bias
    return y


# ---------------------------------------------------------------------------------------------
# RMSNorm, activations
# ---------------------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, residual: np.ndarray | None = None):
    """ggml rms_norm then mul: sum of float32 squares in double, mean rounded to float,
    scale = 1/sqrtf(mean + eps), y = (x * scale) * weight. Same signature as forge.cpu.norm."""
    h, d = norm_input(x, weight, residual)
    sq = (h * h).astype(np.float64)
    mean = (sq.sum(axis=1) / d).astype(_F32)
    scale = _F32(1.0) / np.sqrt(mean + _F32(eps))
    y = h * scale[:, None]
    y *= weight
    return y if residual is None else (y, h)


_GELU_TABLE: np.ndarray | None = None


def _gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16 as float32: fp16(gelu(x)) for every fp16 x, computed as ggml's
    ggml_gelu_f32 is compiled: 0.5x * (1 + tanhf(sqrt(2/pi)x * fma(0.044715x, x, 1)))."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(_F32)
    finite = np.isfinite(x)
    v = np.where(finite, x, _F32(0))
    c = _F32(0.79788456080286535587989211986876)
    a = _F32(0.044715)
    with np.errstate(all="ignore"):
        inner = fma32(a * v, v, _F32(1.0))
        t = libm("tanhf", (c * v) * inner)
        y = (_F32(0.5) * v) * (_F32(1.0) + t)
    y = np.where(finite, y, x)
    return y.astype(np.float16).astype(_F32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's GELU (tanh form) of float32 x through its fp16 table (GGML_GELU_FP16)."""
    global _GELU_TABLE
    if _GELU_TABLE is None:
        _GELU_TABLE = _gelu_table()
    x = np.asarray(x, _F32)
    y = _GELU_TABLE[x.astype(np.float16).view(np.uint16)]
    y = np.where(x >= _F32(10.0), x, y)
    y = np.where(x <= _F32(-10.0), _F32(0.0), y)
    return y.astype(_F32, copy=False)


def silu(x: np.ndarray) -> np.ndarray:
    """ggml's SiLU over rows: ggml_v_silu (x / (1 + v_expf(-x))) on groups of 8, the C
    library's expf on the last len % 8 values of each row."""
    x = np.asarray(x, _F32)
    n = x.shape[-1]
    body = n - n % 8
    y = np.empty(x.shape, _F32)
    with np.errstate(over="ignore"):
        y[..., :body] = x[..., :body] / (_F32(1.0) + v_expf(_F32(0.0) - x[..., :body]))
        if body < n:
            tail = x[..., body:]
            y[..., body:] = tail / (_F32(1.0) + libm("expf", -tail))
    return y


def act_mul(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """As forge.cpu.activation.act_mul, with ggml's SiLU and GELU."""
    if gate.shape != up.shape:
        raise ValueError(f"up: expected shape {tuple(gate.shape)} (as gate), got {tuple(up.shape)}")
    if kind == "silu":
        y = silu(gate)
        y *= up
        return y
    if kind == "gelu_tanh":
        y = gelu_tanh(gate)
        y *= up
        y[np.asarray(gate) <= _F32(-10.0)] = 0.0           # ggml stores +0 there, not 0 * up
        return y
    return _act_mul(gate, up, kind)


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------

class RopeCache:
    """cos/sin tables [positions, rot_dim/2] per RopeSpec, grown on demand, built as ggml's
    ggml_rope_cache_init: theta = p; theta *= powf(base, -2/rot_dim) per pair, in float32;
    theta / freq_factor; times freq_scale; cosf and sinf from the C library."""

    def __init__(self):
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, spec: RopeSpec, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
        ff = None if spec.freq_factors is None else np.asarray(spec.freq_factors, _F32).reshape(-1)
        key = (int(spec.rot_dim), float(spec.base), float(spec.freq_scale),
               None if ff is None else ff.tobytes())
        cos, sin = self._tables.get(key, (np.empty((0, spec.rot_dim // 2), _F32),) * 2)
        if cos.shape[0] < n_pos:
            n_new = max(n_pos, 2 * cos.shape[0], 64)
            half = spec.rot_dim // 2
            ts = powf(spec.base, _F32(-2.0) / _F32(spec.rot_dim))
            theta = np.empty((n_new, half), _F32)
            cur = np.arange(n_new, dtype=_F32)
            for i in range(half):
                th = cur if ff is None else cur / ff[i]
                theta[:, i] = _F32(spec.freq_scale) * th
                cur = cur * ts
            new = slice(cos.shape[0], n_new)
            cos = np.concatenate([cos, libm("cosf", theta[new])])
            sin = np.concatenate([sin, libm("sinf", theta[new])])
            self._tables[key] = (cos, sin)
        return cos, sin


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """x [T, H, D], cos/sin [T, rot/2] -> rotated copy: x0*c - x1*s and x0*s + x1*c, each
    compiled by ggml as one fma over the other product (fma(x0, c, -(x1*s)), fma(x0, s, x1*c))."""
    rot = 2 * cos.shape[-1]
    out = np.array(x, dtype=_F32, copy=True)
    if style == "neox":
        a, b = x[..., :rot // 2], x[..., rot // 2:rot]
    else:
        a, b = x[..., 0:rot:2], x[..., 1:rot:2]
    c, s = cos[:, None, :], sin[:, None, :]
    o0 = fma32(a, c, -(b * s))
    o1 = fma32(a, s, b * c)
    if style == "neox":
        out[..., :rot // 2], out[..., rot // 2:rot] = o0, o1
    else:
        out[..., 0:rot:2], out[..., 1:rot:2] = o0, o1
    return out


def rope(q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec, num_heads: int,
         num_kv_heads: int, head_dim: int, cache: RopeCache) -> np.ndarray:
    """As forge.cpu.rope.rope (same checks, same cache writes) with ggml's cos/sin and rotation."""
    from forge.cpu import rope as _r

    t = q.shape[0]
    positions = np.asarray(positions)
    if spec.style not in _r.STYLES:
        raise ValueError(f"spec.style: expected one of {_r.STYLES}, got {spec.style!r}")
    rot = int(spec.rot_dim)
    if rot <= 0 or rot % 2 or rot > head_dim:
        raise ValueError(f"spec.rot_dim: expected an even number in [2, {head_dim}], got {spec.rot_dim}")
    if positions.shape != (t,):
        raise ValueError(f"positions: expected shape ({t},), got {positions.shape}")
    if t and int(positions.min()) < 0:
        raise ValueError("positions: expected >= 0")
    kc = _r._flat_cache(k_cache, "k_cache", num_kv_heads)
    vc = _r._flat_cache(v_cache, "v_cache", num_kv_heads)
    if q.shape != (t, num_heads * head_dim):
        raise ValueError(f"q: expected shape ({t}, {num_heads * head_dim}), got {tuple(q.shape)}")
    if k.shape != (t, num_kv_heads * head_dim):
        raise ValueError(f"k: expected shape ({t}, {num_kv_heads * head_dim}), got {tuple(k.shape)}")
    dv = vc.shape[2]
    if kc.shape[2] != head_dim:
        raise ValueError(f"k_cache: head dim {kc.shape[2]} != head_dim {head_dim}")
    if v.shape != (t, num_kv_heads * dv):
        raise ValueError(f"v: expected shape ({t}, {num_kv_heads * dv}), got {tuple(v.shape)}")
    slots = np.asarray(slot_mapping)
    if slots.shape != (t,):
        raise ValueError(f"slot_mapping: expected shape ({t},), got {slots.shape}")
    n_pos = int(positions.max()) + 1 if t else 0
    cos_t, sin_t = cache.get(spec, n_pos)
    cos, sin = cos_t[positions], sin_t[positions]
    q_out = rotate(q.reshape(t, num_heads, head_dim), cos, sin, spec.style)
    k_rot = rotate(k.reshape(t, num_kv_heads, head_dim), cos, sin, spec.style)
    v3 = np.asarray(v, _F32).reshape(t, num_kv_heads, dv)
    write_kv(kc, vc, slots, k_rot, v3)
    return q_out.reshape(t, num_heads * head_dim)


# ---------------------------------------------------------------------------------------------
# attention (F32 KV cache, no flash attention)
# ---------------------------------------------------------------------------------------------

def _dot_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ggml_vec_dot_f32 (AVX2) over the last axis of a [..., n] and b [..., n] (broadcast):
    4 accumulators of 8 lanes over steps of 32, GGML_F32_VEC_REDUCE, then the n % 32 leftovers."""
    n = a.shape[-1]
    n32 = n - n % 32
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    acc = np.zeros(shape + (4, 8), _F32)
    for i in range(0, n32, 32):
        acc = fma32(a[..., i:i + 32].reshape(a.shape[:-1] + (4, 8)),
                    b[..., i:i + 32].reshape(b.shape[:-1] + (4, 8)), acc)
    s = _reduce_4x8(acc)
    for i in range(n32, n):
        s = fma32(a[..., i], b[..., i], s)
    return s


def _dot_tinyblas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """llamafile tinyBLAS (AVX, float): 8 lanes over steps of 8, then hsum. n % 8 == 0."""
    n = a.shape[-1]
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    acc = np.zeros(shape + (8,), _F32)
    for i in range(0, n, 8):
        acc = fma32(a[..., i:i + 8], b[..., i:i + 8], acc)
    return hsum8(acc)


def softmax_rows(s: np.ndarray) -> np.ndarray:
    """ggml soft_max over the last axis (a multiple of 8; -inf where masked): max, v_expf of
    s - max in groups of 8, each group's hsum added to a double, times (float)(1/sum)."""
    mx = s.max(axis=-1, keepdims=True)
    e = v_expf(s - mx)
    groups = hsum8(e.reshape(e.shape[:-1] + (-1, 8))).astype(np.float64)
    total = np.zeros(groups.shape[:-1])
    for g in range(groups.shape[-1]):
        total += groups[..., g]
    return e * (1.0 / total).astype(_F32)[..., None]


SCORE_ELEMS = 1 << 16            # bound on heads * queries * keys per tile (K.Q holds 32x that)


def _attend_one(q: np.ndarray, k: np.ndarray, v: np.ndarray, p0: int, scale: float,
                window: int | None, softcap: float | None, group: int) -> np.ndarray:
    """One sequence. q [L, H, D] at positions p0.., k [S, Hkv, D], v [S, Hkv, Dv] -> [L, H, Dv]."""
    n_q, h, d = q.shape
    n_k, _, dv = v.shape
    kh = np.repeat(k, group, axis=1).transpose(1, 0, 2)                   # [H, S, D]
    vh = np.repeat(v, group, axis=1).transpose(1, 2, 0)                   # [H, Dv, S]
    n_pad = -(-n_k // 8) * 8
    sgemm = n_q >= 2 and dv % 4 == 0    # llamafile sgemm takes P.V for >= 2 queries
    n_v = n_pad if sgemm else -(-n_k // 32) * 32
    vpad = np.zeros((h, dv, n_v), _F32)
    vpad[..., :n_k] = vh
    out = np.empty((n_q, h, dv), _F32)
    tile = max(1, SCORE_ELEMS // (h * max(n_k, dv)))
    for i0 in range(0, n_q, tile):
        i1 = min(n_q, i0 + tile)
        qh = q[i0:i1].transpose(1, 0, 2)                                  # [H, l, D]
        if softcap is not None:         # gemma-2 style: q pre-scaled, scores capped
            qh = qh * _F32(scale)
        kq = _dot_f32(kh[:, None, :, :], qh[:, :, None, :])               # [H, l, S]
        if softcap is not None:         # ggml_tanh calls tanhf per value: rounded tanh here
            kq = np.tanh((kq * _F32(1.0 / softcap)).astype(np.float64)).astype(_F32) * _F32(softcap)
        else:
            kq = kq * _F32(scale)
        s = np.full((h, i1 - i0, n_pad), -np.inf, _F32)
        qpos = p0 + np.arange(i0, i1)[:, None]
        kpos = np.arange(n_k)[None, :]
        allowed = kpos <= qpos
        if window is not None:
            allowed &= qpos - kpos < window
        s[..., :n_k] = np.where(allowed, kq, _F32(-np.inf))
        prob = softmax_rows(s)                                            # [H, l, n_pad]
        if sgemm:
            o = _dot_tinyblas(vpad[:, None, :, :], prob[:, :, None, :])   # [H, l, Dv]
        else:
            ppad = np.zeros((h, i1 - i0, n_v), _F32)
            ppad[..., :n_pad] = prob[..., :n_v]
            o = _dot_f32(vpad[:, None, :, :], ppad[:, :, None, :])
        out[i0:i1] = o.transpose(1, 0, 2)
    return out


def attention(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads: int,
              num_kv_heads: int, scale: float, sliding_window: int | None = None,
              softcap: float | None = None) -> np.ndarray:
    """As forge.cpu.attention.attention, with ggml's K.Q, softmax and P.V. A sequence's keys sit
    at positions 0..seq_len-1, as llama.cpp's cache cells do for a single sequence."""
    d, dv, t, qsl, lens, tables, _ = _check_attention_args(
        q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads, num_kv_heads,
        sliding_window, softcap)
    nseq, bs = lens.shape[0], k_cache.shape[1]
    group = num_heads // num_kv_heads
    q3 = np.asarray(q, _F32).reshape(t, num_heads, d)
    out = np.empty((t, num_heads, dv), _F32)
    for b in range(nseq):
        s0, s1, n_k = int(qsl[b]), int(qsl[b + 1]), int(lens[b])
        if s1 == s0:
            continue
        blocks = tables[b, :-(-n_k // bs)]
        k = k_cache[blocks].reshape(-1, num_kv_heads, d)[:n_k].astype(_F32, copy=False)
        v = v_cache[blocks].reshape(-1, num_kv_heads, dv)[:n_k].astype(_F32, copy=False)
        out[s0:s1] = _attend_one(q3[s0:s1], k, v, n_k - (s1 - s0), scale, sliding_window,
                                 softcap, group)
    return out.reshape(t, num_heads * dv)
