"""forge/cpu/llamacpp.py: llama.cpp's CPU arithmetic, emulated in vectorized NumPy.

Two kinds of reference, both written plainly here:
- scalar transcriptions of ggml's algorithms (loops over blocks, lanes and elements, one float32
  rounding per C operation, fused multiply-adds rounded once from the exact rational value), which
  the vectorized code must match bit for bit;
- float64 math (dequantized weights, exp, gelu, softmax...), which the emulation must be close to,
  so that the bit-exact kernels are known to compute the right thing at all.
The end-to-end check against llama.cpp itself is tests/models/test_greedy_llamacpp.py.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants

from forge.cpu import llamacpp as lc
from forge.cpu.backend import NumpyBackend
from forge.runtime.backend import ForwardBatch, QTensor, RopeSpec

F32 = np.float32
EXACT_TYPES = [Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q6_K]


# ---------------------------------------------------------------------------------------------
# scalar helpers: float32 rounding of exact values
# ---------------------------------------------------------------------------------------------

def r32(fr: Fraction) -> float:
    """The float32 nearest to the exact rational `fr` (ties to even), as a Python float."""
    f = np.float32(float(fr))          # within one float32 ulp of the answer
    best = None
    for c in (np.nextafter(f, F32(-np.inf)), f, np.nextafter(f, F32(np.inf))):
        err = abs(Fraction(float(c)) - fr)
        even = int(np.asarray(c, F32).view(np.uint32)) % 2 == 0
        key = (err, not even)
        if best is None or key < best[0]:
            best = (key, float(c))
    return best[1]


def fma(a, b, c) -> float:
    """float32 fma(a, b, c): exact a*b + c, rounded once."""
    return r32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def add(a, b) -> float:
    return float(F32(a) + F32(b))


def mul(a, b) -> float:
    with np.errstate(over="ignore", under="ignore"):
        return float(F32(a) * F32(b))


def hsum8(v) -> float:
    """ggml's hsum_float_8: ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7))."""
    a = [add(v[i], v[i + 4]) for i in range(4)]
    return add(add(a[0], a[2]), add(a[1], a[3]))


# ---------------------------------------------------------------------------------------------
# random GGUF blocks and a plain decoder per type
# ---------------------------------------------------------------------------------------------

def random_raw(rng, qt: Q, rows: int, cols: int) -> np.ndarray:
    """Random but valid GGUF blocks for a [rows, cols] weight (uint8 [rows, bytes_per_row])."""
    block, size = GGML_QUANT_SIZES[qt]
    nb = cols // block
    b = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    half = lambda shape, lo, hi: rng.uniform(lo, hi, shape).astype(np.float16).view(np.uint8)
    if qt in (Q.Q4_1, Q.Q5_1):
        b[..., 0:2] = half((rows, nb, 1), 1e-3, 3e-2)
        b[..., 2:4] = half((rows, nb, 1), -0.3, 0.0)
    elif qt in (Q.Q5_0, Q.Q8_0):
        b[..., 0:2] = half((rows, nb, 1), 1e-3, 3e-2)
        if qt == Q.Q8_0:      # quantize_row_q8_0 never stores -128
            qs = b[..., 2:].view(np.int8)
            qs[qs == -128] = -127
    elif qt == Q.Q4_K:
        b[..., 0:2] = half((rows, nb, 1), 1e-4, 3e-3)
        b[..., 2:4] = half((rows, nb, 1), 1e-4, 3e-3)
    elif qt == Q.Q6_K:
        b[..., 208:210] = half((rows, nb, 1), 1e-4, 3e-3)
    return b.reshape(rows, nb * size)


def decode(qt: Q, raw: np.ndarray, cols: int) -> dict:
    """Plain per-element decoding (ggml's dequantize_row_* structure): integer quants `q` [R, K],
    per-element sub-block scales `sc`, block scales `d` [R, nb] and, by type, mins."""
    rows = raw.shape[0]
    block, size = GGML_QUANT_SIZES[qt]
    nb = cols // block
    b = raw.reshape(rows, nb, size)
    f16 = lambda x: np.ascontiguousarray(x).view(np.float16)[..., 0].astype(np.float64)
    q = np.zeros((rows, cols), np.int64)
    out = {}
    for r in range(rows):
        for i in range(nb):
            blk = b[r, i]
            base = i * block
            if qt in (Q.Q4_1, Q.Q5_0, Q.Q5_1):
                qs = blk[{Q.Q4_1: 4, Q.Q5_0: 6, Q.Q5_1: 8}[qt]:]
                qh = int.from_bytes(bytes(blk[{Q.Q5_0: 2, Q.Q5_1: 4}.get(qt, 0):][:4]), "little")
                for j in range(16):
                    lo, hi = int(qs[j]) & 15, int(qs[j]) >> 4
                    if qt != Q.Q4_1:
                        lo |= ((qh >> j) & 1) << 4
                        hi |= ((qh >> (j + 16)) & 1) << 4
                    off = 16 if qt == Q.Q5_0 else 0
                    q[r, base + j], q[r, base + j + 16] = lo - off, hi - off
            elif qt == Q.Q8_0:
                q[r, base:base + 32] = blk[2:].view(np.int8)
            elif qt == Q.Q6_K:
                ql, qh = blk[:128].astype(int), blk[128:192].astype(int)
                for h in range(2):
                    for l in range(32):
                        L, H = ql[64 * h:], qh[32 * h:]
                        e = base + 128 * h + l
                        q[r, e] = ((L[l] & 15) | ((H[l] & 3) << 4)) - 32
                        q[r, e + 32] = ((L[l + 32] & 15) | (((H[l] >> 2) & 3) << 4)) - 32
                        q[r, e + 64] = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32
                        q[r, e + 96] = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32
            elif qt == Q.Q4_K:
                qs = blk[16:].astype(int)
                for j in range(4):
                    for l in range(32):
                        q[r, base + 64 * j + l] = qs[32 * j + l] & 15
                        q[r, base + 64 * j + 32 + l] = qs[32 * j + l] >> 4
    if qt in (Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        out["d"] = f16(b[..., 0:2])
        if qt in (Q.Q4_1, Q.Q5_1):
            out["m"] = f16(b[..., 2:4])
    elif qt == Q.Q6_K:
        out["d"] = f16(b[..., 208:210])
        out["sc16"] = b[..., 192:208].view(np.int8).astype(np.int64)            # [R, nb, 16]
    else:
        out["d"], out["dmin"] = f16(b[..., 0:2]), f16(b[..., 2:4])
        s = b[..., 4:16].astype(np.int64)
        sc = np.zeros((rows, nb, 8), np.int64)
        mn = np.zeros_like(sc)
        for j in range(8):
            if j < 4:
                sc[..., j], mn[..., j] = s[..., j] & 63, s[..., j + 4] & 63
            else:
                sc[..., j] = (s[..., j + 4] & 15) | ((s[..., j - 4] >> 6) << 4)
                mn[..., j] = (s[..., j + 4] >> 4) | ((s[..., j] >> 6) << 4)
        out["sc32"], out["mn"] = sc, mn
    out["q"] = q
    return out


def dequant64(qt: Q, dec: dict) -> np.ndarray:
    rows, cols = dec["q"].shape
    q = dec["q"].astype(np.float64)
    if qt == Q.Q6_K:
        return np.repeat(dec["d"], 256, 1) * np.repeat(dec["sc16"].reshape(rows, -1), 16, 1) * q
    if qt == Q.Q4_K:
        return (np.repeat(dec["d"], 256, 1) * np.repeat(dec["sc32"].reshape(rows, -1), 32, 1) * q
                - np.repeat(dec["dmin"], 256, 1) * np.repeat(dec["mn"].reshape(rows, -1), 32, 1))
    w = np.repeat(dec["d"], 32, 1) * q
    return w + np.repeat(dec["m"], 32, 1) if "m" in dec else w


@pytest.mark.parametrize("qt", EXACT_TYPES, ids=lambda q: q.name)
def test_plain_decoder_agrees_with_gguf(qt, rng):
    raw = random_raw(rng, qt, 3, 512)
    ref = quants.dequantize(raw, qt)
    # every product of fields is exact in float32 (fp16 scale x 6-8-bit sub-scale x code), so
    # gguf's float32 result is the exact value rounded once: the float64 value rounded to float32
    # (compared unrounded, the subtraction of a K-quant's min differs by 1 ulp on some seeds)
    np.testing.assert_array_equal(dequant64(qt, decode(qt, raw, 512)).astype(np.float32), ref)


# ---------------------------------------------------------------------------------------------
# activation quantization
# ---------------------------------------------------------------------------------------------

def q8_0_scalar(x: np.ndarray):
    """quantize_row_q8_0 (AVX2): d = amax/127, q = round_half_even(x * (127/amax))."""
    qs, ds = [], []
    for blk in x.reshape(-1, 32):
        amax = F32(max(abs(float(v)) for v in blk))
        d = amax / F32(127)
        inv = F32(127) / amax if amax else F32(0)
        qs.append([float(np.rint(F32(v) * inv)) for v in blk])
        ds.append(float(np.float16(d)))
    return np.array(qs), np.array(ds)


def q8_k_scalar(x: np.ndarray):
    """quantize_row_q8_K_ref: the first value of largest magnitude sets iscale = -127/max."""
    qs, ds = [], []
    for blk in x.reshape(-1, 256):
        amax, mx = 0.0, 0.0
        for v in blk:
            if abs(float(v)) > amax:
                amax, mx = abs(float(v)), float(v)
        iscale = F32(-127) / F32(mx) if amax else F32(0)
        qs.append([min(127.0, float(np.rint(F32(v) * iscale))) for v in blk])
        ds.append(float(F32(1) / iscale) if amax else 0.0)
    return np.array(qs), np.array(ds)


def test_quantize_q8_0_and_q8_1(rng):
    x = (rng.standard_normal((3, 96)) * rng.uniform(0.1, 10)).astype(F32)
    x[1, 32:64] = 0.0                                            # an all-zero block
    x[2, 5] = 40.0                                               # an outlier
    q, d, dh = lc.quantize_q8_0(x)
    q_ref, dh_ref = q8_0_scalar(x)
    np.testing.assert_array_equal(q.reshape(-1, 32), q_ref)
    np.testing.assert_array_equal(dh.reshape(-1), dh_ref)
    assert np.abs(q).max() <= 127
    deq = (q * dh[..., None]).reshape(x.shape)
    assert np.all(np.abs(deq - x) <= np.repeat(dh, 32, 1) * 0.51 + np.abs(x) * 2e-3)
    q1, dh1, s = lc.quantize_q8_1(x)
    np.testing.assert_array_equal(q1, q)
    np.testing.assert_array_equal(dh1, dh)
    np.testing.assert_array_equal(s, (d * q.sum(-1)).astype(np.float16).astype(F32))
    with pytest.raises(ValueError, match="x"):
        lc.quantize_q8_0(x[:, :40])


def test_quantize_q8_k(rng):
    x = rng.standard_normal((2, 512)).astype(F32)
    x[0, 3], x[0, 100] = -7.0, 7.0                                # tie in magnitude: first wins
    x[1, 256:] = 0.0
    q, d = lc.quantize_q8_k(x)
    q_ref, d_ref = q8_k_scalar(x)
    np.testing.assert_array_equal(q.reshape(-1, 256), q_ref)
    np.testing.assert_array_equal(d.reshape(-1), d_ref)
    # iscale = -127/max with max = -7, the first of the two: d > 0, -7 -> -127 and 7 -> 127
    assert d[0, 0] > 0 and q[0, 0, 3] == -127 and q[0, 0, 100] == 127
    np.testing.assert_allclose((q * d[..., None]).reshape(x.shape), x, atol=7.0 / 127 * 0.51)


def test_vec_dot_type_table():
    assert lc.vec_dot_type(Q.Q4_1) == "q8_1" and lc.vec_dot_type(Q.Q5_0) == "q8_0"
    assert lc.vec_dot_type(Q.Q6_K) == "q8_k" and lc.vec_dot_type(Q.F16) == "f16"
    assert lc.vec_dot_type(Q.F32) == "f32" and lc.vec_dot_type(Q.BF16) == "bf16"
    x = np.array([[1.0 + 2**-9, -3.3, 65504.0, np.nan]], F32)
    b = lc.round_bf16(x)
    assert b[0, 0] == 1.0 and b.view(np.uint32)[0, 1] & 0xFFFF == 0 and np.isnan(b[0, 3])


# ---------------------------------------------------------------------------------------------
# matmul kernels: bit for bit against scalar transcriptions of ggml
# ---------------------------------------------------------------------------------------------

def kernel_scalar(qt: Q, dec: dict, x: np.ndarray) -> np.ndarray:
    """One scalar loop per output, in the order of the ggml kernel forge emulates for `qt`."""
    rows, cols = dec["q"].shape
    T = x.shape[0]
    y = np.zeros((T, rows))
    for t in range(T):
        if qt in (Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
            qx, dxh = q8_0_scalar(x[t])
            qx = qx.reshape(-1)
            if qt in (Q.Q4_1, Q.Q5_1):      # Q8_1's s = fp16(d_unrounded * sum(q))
                amax = [F32(max(abs(float(v)) for v in blk)) for blk in x[t].reshape(-1, 32)]
                sx = [float(np.float16(F32(a / F32(127)) * F32(sum(qx[32 * b:32 * b + 32]))))
                      for b, a in enumerate(amax)]
        else:
            qx, dxk = q8_k_scalar(x[t])
            qx = qx.reshape(-1)
        for r in range(rows):
            qw = dec["q"][r]
            if qt in (Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):          # ggml_vec_dot_*_q8_0/1
                acc, summs = [0.0] * 8, 0.0
                for b in range(cols // 32):
                    dd = mul(dec["d"][r, b], dxh[b])
                    for l in range(8):
                        isum = sum(int(qw[32 * b + 4 * l + e]) * int(qx[32 * b + 4 * l + e]) for e in range(4))
                        acc[l] = fma(dd, isum, acc[l])
                    if "m" in dec:
                        summs = add(summs, mul(dec["m"][r, b], sx[b]))
                y[t, r] = add(hsum8(acc), summs) if "m" in dec else hsum8(acc)
            elif qt in (Q.Q6_K, Q.Q4_K) and T >= 8 and not (qt == Q.Q4_K and rows % 8 == 0):
                y_ = 0.0                                         # ggml's tiled K-quant matmul
                for b in range(cols // 256):
                    e0 = 256 * b
                    if qt == Q.Q6_K:
                        sc = dec["sc16"][r, b]
                        s1 = sum(int(sc[e // 16]) * int(qw[e0 + e]) * int(qx[e0 + e]) for e in range(256))
                        res = mul(dec["d"][r, b], float(F32(s1)))
                    else:
                        sc, mn = dec["sc32"][r, b], dec["mn"][r, b]
                        s1 = sum(int(sc[e // 32]) * int(qw[e0 + e]) * int(qx[e0 + e]) for e in range(256))
                        s2 = sum(int(mn[j]) * int(qx[e0 + 32 * j:e0 + 32 * j + 32].sum()) for j in range(8))
                        res = fma(-dec["dmin"][r, b], float(F32(s2)), mul(dec["d"][r, b], float(F32(s1))))
                    y_ = fma(res, dxk[b], y_)
                y[t, r] = y_
            elif qt == Q.Q6_K:                                   # ggml_vec_dot_q6_K_q8_K (AVX2)
                acc = [0.0] * 8
                for b in range(cols // 256):
                    e0 = 256 * b
                    sc = dec["sc16"][r, b]
                    bs16 = [int(qx[e0 + 16 * j:e0 + 16 * j + 16].sum()) for j in range(16)]
                    d = mul(dxk[b], dec["d"][r, b])
                    for l in range(8):
                        isum = sum(int(sc[e // 16]) * int(qw[e0 + e] + 32) * int(qx[e0 + e])
                                   for m in range(8) for e in range(32 * m + 4 * l, 32 * m + 4 * l + 4))
                        isum -= 32 * (bs16[2 * l] * int(sc[2 * l]) + bs16[2 * l + 1] * int(sc[2 * l + 1]))
                        acc[l] = fma(d, float(F32(isum)), acc[l])
                y[t, r] = hsum8(acc)
            else:                                                # Q4_K
                nb = cols // 256
                sc, mn = dec["sc32"][r], dec["mn"][r]
                bs32 = [[int(qx[256 * b + 32 * j:256 * b + 32 * j + 32].sum()) for j in range(8)] for b in range(nb)]
                isub = [[sum(int(sc[b, j]) * int(qw[256 * b + 32 * j + e]) * int(qx[256 * b + 32 * j + e])
                             for e in range(32)) for j in range(8)] for b in range(nb)]
                if rows % 8 == 0:                                # repacked: ggml_gemm / ggml_gemv q4_K_8x8
                    acc = accm = 0.0
                    gemm = t < T - T % 4
                    for b in range(nb):
                        ds, dm = mul(dec["d"][r, b], dxk[b]), mul(dec["dmin"][r, b], dxk[b])
                        groups = [(2 * s, 2 * s + 2) for s in range(4)] if gemm else [(0, 8)]
                        for j0, j1 in groups:
                            acc = fma(float(F32(sum(isub[b][j0:j1]))), ds, acc)
                            accm = fma(float(F32(sum(int(mn[b, j]) * bs32[b][j] for j in range(j0, j1)))), dm, accm)
                    y[t, r] = float(F32(acc) - F32(accm))
                else:                                            # ggml_vec_dot_q4_K_q8_K (AVX2)
                    acc, accm = [0.0] * 8, [0.0] * 4
                    for b in range(nb):
                        d, dmin = mul(dxk[b], dec["d"][r, b]), -mul(dxk[b], dec["dmin"][r, b])
                        for l in range(8):
                            isum = sum(int(sc[b, e // 32]) * int(qw[256 * b + e]) * int(qx[256 * b + e])
                                       for m in range(8) for e in range(32 * m + 4 * l, 32 * m + 4 * l + 4))
                            acc[l] = fma(d, float(F32(isum)), acc[l])
                        for k in range(4):
                            p = int(mn[b, 2 * k]) * bs32[b][2 * k] + int(mn[b, 2 * k + 1]) * bs32[b][2 * k + 1]
                            accm[k] = fma(dmin, float(F32(p)), accm[k])
                    y[t, r] = add(hsum8(acc), add(add(accm[0], accm[2]), add(accm[1], accm[3])))
    return y.astype(F32)


@pytest.mark.parametrize("qt,rows,cols,tokens", [
    (Q.Q4_1, 5, 96, 3), (Q.Q5_0, 3, 64, 2), (Q.Q5_1, 4, 32, 1), (Q.Q8_0, 7, 64, 2),
    (Q.Q6_K, 3, 512, 2),
    (Q.Q6_K, 2, 512, 9),        # >= 8 rows: the tiled K-quant matmul
    (Q.Q4_K, 8, 256, 6),        # repacked: rows 0-3 through the gemm, 4-5 through the gemv
    (Q.Q4_K, 8, 256, 9),        # repacked: rows 0-7 gemm, 8 gemv (never tiled)
    (Q.Q4_K, 5, 512, 1),        # rows % 8 != 0: ggml_vec_dot_q4_K_q8_K
    (Q.Q4_K, 3, 256, 8),        # rows % 8 != 0 and >= 8 rows: tiled, with minimums
], ids=lambda v: getattr(v, "name", str(v)))
def test_linear_exact_matches_scalar_ggml(qt, rows, cols, tokens, rng):
    raw = random_raw(rng, qt, rows, cols)
    x = (rng.standard_normal((tokens, cols)) * rng.uniform(0.2, 5.0, (tokens, 1))).astype(F32)
    w = QTensor(int(qt), (rows, cols), raw, "raw")
    p = lc.pack(qt, raw, rows, cols)
    assert p is not None and p.kernel == {Q.Q6_K: "q6k"}.get(qt, "q4k" if rows % 8 == 0 else "q4kv") \
        if qt in (Q.Q4_K, Q.Q6_K) else p.kernel == "b32"
    y = lc.linear_exact(x, w, p)
    dec = decode(qt, raw, cols)
    ref = kernel_scalar(qt, dec, x)
    assert y.dtype == F32 and y.shape == (tokens, rows)
    np.testing.assert_array_equal(y, ref)
    # and it is the matmul it should be: dequantized activation @ dequantized weight (+ for
    # Q8_1 the fp16 rounding of s, which multiplies the weight's block minimums), to float32
    xq, corr = lc.activation(x, qt)
    close = xq.astype(np.float64) @ dequant64(qt, dec).T
    if corr is not None:
        close += corr.astype(np.float64) @ dec["m"].T
    np.testing.assert_allclose(y, close, rtol=1e-5, atol=1e-5 * np.abs(close).max())


def test_linear_exact_bias_chunks_and_errors(rng, monkeypatch):
    raw = random_raw(rng, Q.Q8_0, 6, 64)
    w = QTensor(int(Q.Q8_0), (6, 64), raw, "raw")
    p = lc.pack(Q.Q8_0, raw, 6, 64)
    x = rng.standard_normal((9, 64)).astype(F32)
    bias = rng.standard_normal(6).astype(F32)
    whole = lc.linear_exact(x, w, p, bias)
    monkeypatch.setattr(lc, "CHUNK_ELEMS", 2 * 6 * 16)          # 2 rows per chunk
    np.testing.assert_array_equal(lc.linear_exact(x, w, p, bias), whole)
    np.testing.assert_array_equal(whole[3:4], lc.linear_exact(x[3:4], w, p, bias))   # rows independent
    with pytest.raises(ValueError, match="x"):
        lc.linear_exact(x[:, :32], w, p)
    with pytest.raises(ValueError, match="bias"):
        lc.linear_exact(x, w, p, bias[:3])
    assert lc.pack(Q.Q4_0, random_raw(rng, Q.Q4_0, 2, 32), 2, 32) is None     # repacked on AVX2: not exact


@pytest.mark.parametrize("qt,rows", [(Q.Q6_K, 4), (Q.Q4_K, 3), (Q.Q4_K, 8)], ids=["Q6_K", "Q4_K", "Q4_K-repacked"])
def test_kernel_choice_follows_the_whole_call(qt, rows, rng, monkeypatch):
    """ggml picks the tiled kernel (and the repacked gemm/gemv split) by the row count of the
    whole matmul: splitting a 10-row call into chunks must not change any row."""
    raw = random_raw(rng, qt, rows, 256)
    w = QTensor(int(qt), (rows, 256), raw, "raw")
    p = lc.pack(qt, raw, rows, 256)
    x = rng.standard_normal((10, 256)).astype(F32)
    whole = lc.linear_exact(x, w, p)
    monkeypatch.setattr(lc, "CHUNK_ELEMS", 3 * rows * 64)           # 3-row chunks
    np.testing.assert_array_equal(lc.linear_exact(x, w, p), whole)
    single = np.concatenate([lc.linear_exact(x[i:i + 1], w, p) for i in range(10)])
    assert (single != whole).any()                                  # a 1-row call is another kernel
    np.testing.assert_allclose(single, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_concat_packed_equals_parts(rng):
    raws = [random_raw(rng, Q.Q6_K, r, 256) for r in (3, 5)]
    parts = [lc.pack(Q.Q6_K, r, r.shape[0], 256) for r in raws]
    fused = lc.concat_packed(parts)
    x = rng.standard_normal((2, 256)).astype(F32)
    w = QTensor(int(Q.Q6_K), (8, 256), np.concatenate(raws), "raw")
    y = lc.linear_exact(x, w, fused)
    np.testing.assert_array_equal(y[:, :3], lc.linear_exact(x, QTensor(int(Q.Q6_K), (3, 256), raws[0], "raw"), parts[0]))
    np.testing.assert_array_equal(y, lc.linear_exact(x, w, lc.pack(Q.Q6_K, w.data, 8, 256)))
    with pytest.raises(ValueError, match="parts"):
        lc.concat_packed([parts[0], lc.pack(Q.Q8_0, random_raw(rng, Q.Q8_0, 2, 256), 2, 256)])


def test_linear_fast_q4_1_needs_mins(rng):
    from forge.cpu.dequant import load_qtensor

    w32 = rng.standard_normal((5, 64)).astype(F32)
    raw = quants.quantize(w32, Q.Q4_1)
    w = load_qtensor(int(Q.Q4_1), (5, 64), raw, policy="f32")
    x = rng.standard_normal((2, 64)).astype(F32)
    mins = lc.block_mins(Q.Q4_1, raw, 5, 64)
    y = lc.linear_fast(x, w, None, mins)
    exact = lc.linear_exact(x, QTensor(int(Q.Q4_1), (5, 64), raw, "raw"), lc.pack(Q.Q4_1, raw, 5, 64))
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mins"):
        lc.linear_fast(x, w, None, None)


# ---------------------------------------------------------------------------------------------
# elementwise ops
# ---------------------------------------------------------------------------------------------

_C = {k: float(v) for k, v in zip(("r", "log2e", "ln2lo", "ln2hi", "c5", "c4", "c3", "c2", "c1"), lc._EXP_C)}


def v_expf_scalar(x: float) -> float:
    """ggml_v_expf (AVX2) for one value, transcribed from vec.h."""
    C = _C
    z = fma(x, C["log2e"], C["r"])
    n = float(F32(z) - F32(C["r"]))
    b = fma(-n, C["ln2lo"], fma(-n, C["ln2hi"], x))
    e = (int(np.asarray(F32(z)).view(np.int32)) << 23) & 0xFFFFFFFF
    k = np.uint32((e + 0x3F800000) & 0xFFFFFFFF).view(F32)
    u = mul(b, b)
    j = fma(fma(fma(C["c5"], b, C["c4"]), u, fma(C["c3"], b, C["c2"])), u, mul(C["c1"], b))
    if abs(n) <= 126:
        return fma(j, float(k), float(k))
    g = 0x82000000 if n <= 0 else 0
    s1 = np.uint32((g + 0x7F000000) & 0xFFFFFFFF).view(F32)
    s2 = np.uint32((e - g) & 0xFFFFFFFF).view(F32)
    if abs(n) > 192:
        return mul(s1, s1)
    return mul(fma(float(s2), j, float(s2)), s1)


def test_v_expf(rng):
    x = np.concatenate([rng.uniform(-100, 88, 400), rng.uniform(-2, 2, 200),
                        [0.0, -0.0, -87.5, -103.0, 88.3, -120.0, 100.0, -np.inf]]).astype(F32)
    y = lc.v_expf(x)
    ref_bits = [v_expf_scalar(float(v)) if np.isfinite(v) else 0.0 for v in x]
    np.testing.assert_array_equal(y[np.isfinite(x)], np.array(ref_bits, F32)[np.isfinite(x)])
    assert y[-1] == 0.0                                              # exp(-inf) = 0
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
    ok = (ref > 1e-37) & (ref < 3e38)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=3 * 2**-23)      # ~1.5 ulp, as ggml documents
    assert np.isinf(lc.v_expf(np.array([100.0], F32))[0])


def test_silu_and_gelu(rng):
    g = (rng.standard_normal((3, 21)) * 4).astype(F32)               # 21: 16 vector + 5 libm values
    g[0, 0], g[0, 1], g[0, 2] = 10.5, -10.5, 0.0
    up = rng.standard_normal((3, 21)).astype(F32)
    g64 = g.astype(np.float64)
    silu = lc.act_mul(g, up, "silu")
    np.testing.assert_allclose(silu, g64 / (1 + np.exp(-g64)) * up, rtol=2e-6, atol=1e-7)
    body = g[:, :16]
    np.testing.assert_array_equal(silu[:, :16], body / (F32(1) + lc.v_expf(F32(0) - body)) * up[:, :16])
    gelu = lc.act_mul(g, up, "gelu_tanh")
    ref = 0.5 * g64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (g64 + 0.044715 * g64**3)))
    # the fp16 table: input and output rounded to fp16 (relative 2^-11 each, times gelu's slope)
    np.testing.assert_allclose(gelu, ref * up, rtol=3e-3, atol=2e-3 * np.abs(up).max())
    assert gelu[0, 0] == F32(10.5) * up[0, 0] and gelu[0, 2] == 0.0
    assert gelu[0, 1] == 0.0 and not np.signbit(gelu[0, 1])       # ggml stores +0, whatever up is
    t = lc._gelu_table()
    h = np.float16(1.5).view(np.uint16)
    v = F32(1.5)
    inner = fma(mul(F32(0.044715), v), v, 1.0)
    want = np.float16(mul(mul(0.5, v), add(1.0, float(lc.libm("tanhf", [mul(mul(F32(0.79788456080286535587989211986876), v), inner)])[0]))))
    assert t[h] == F32(want)
    with pytest.raises(ValueError, match="up"):
        lc.act_mul(g, up[:, :3], "silu")
    with pytest.raises(ValueError, match="kind"):
        lc.act_mul(g, up, "relu")


def test_rms_norm(rng):
    x = (rng.standard_normal((4, 37)) * 3).astype(F32)
    res = rng.standard_normal((4, 37)).astype(F32)
    w = rng.standard_normal(37).astype(F32)
    y, h = lc.rms_norm(x, w, 1e-6, residual=res)
    np.testing.assert_array_equal(h, x + res)
    for r in range(4):                                            # ggml: double sum, float mean
        s = sum(float(F32(v) * F32(v)) for v in h[r])
        scale = F32(1) / np.sqrt(F32(s / 37) + F32(1e-6))
        np.testing.assert_array_equal(y[r], (h[r] * scale) * w)
    h64 = h.astype(np.float64)
    ref = h64 / np.sqrt((h64**2).mean(1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        lc.rms_norm(x, w[:5], 1e-6)


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope_tables_rotation_and_cache(style, rng):
    heads, kvh, d, rot = 3, 1, 16, 12
    spec = RopeSpec(rot_dim=rot, base=10000.0, style=style, freq_scale=0.5,
                    freq_factors=np.array([1, 1, 2, 4, 8, 1], F32))
    t = 5
    pos = np.array([0, 1, 7, 30, 2], np.int32)
    q = rng.standard_normal((t, heads * d)).astype(F32)
    k = rng.standard_normal((t, kvh * d)).astype(F32)
    v = rng.standard_normal((t, kvh * d)).astype(F32)
    kc, vc = np.zeros((4, 8, kvh, d), F32), np.zeros((4, 8, kvh, d), F32)
    slots = np.array([8, 9, 10, 11, -1])
    cache = lc.RopeCache()
    qr = lc.rope(q, k, v, pos, kc, vc, slots, spec, heads, kvh, d, cache)
    cos, sin = cache.get(spec, 31)
    # the table: theta_i = p * ts^i in float32 steps, / freq_factor, * freq_scale
    ts = lc.powf(10000.0, F32(-2.0) / F32(rot))
    for p in (0, 7, 30):
        th = F32(p)
        for i in range(rot // 2):
            want = F32(0.5) * (th / spec.freq_factors[i])
            assert cos[p, i] == lc.libm("cosf", [want])[0] and sin[p, i] == lc.libm("sinf", [want])[0]
            th = th * ts
    np.testing.assert_allclose(cos[:31], np.cos(0.5 * np.arange(31)[:, None] * 10000.0 ** (-np.arange(6) * 2 / rot) / spec.freq_factors), atol=2e-6)
    # rotation against float64
    th = 0.5 * pos[:, None].astype(np.float64) * 10000.0 ** (-np.arange(6) * 2 / rot) / spec.freq_factors
    x = q.reshape(t, heads, d).astype(np.float64)
    a, b = (x[..., :6], x[..., 6:12]) if style == "neox" else (x[..., 0:12:2], x[..., 1:12:2])
    c, s = np.cos(th)[:, None], np.sin(th)[:, None]
    ref = x.copy()
    if style == "neox":
        ref[..., :6], ref[..., 6:12] = a * c - b * s, a * s + b * c
    else:
        ref[..., 0:12:2], ref[..., 1:12:2] = a * c - b * s, a * s + b * c
    np.testing.assert_allclose(qr.reshape(t, heads, d), ref, atol=2e-5)
    np.testing.assert_array_equal(qr.reshape(t, heads, d)[..., 12:], q.reshape(t, heads, d)[..., 12:])
    # one rotated pair, transcribed: dst0 = fma(x0, cos, -(x1*sin)), dst1 = fma(x0, sin, x1*cos)
    i = 2
    x0, x1 = (q[3, i], q[3, i + 6]) if style == "neox" else (q[3, 2 * i], q[3, 2 * i + 1])
    cc, ss = cos[30, i], sin[30, i]
    got = (qr[3, i], qr[3, i + 6]) if style == "neox" else (qr[3, 2 * i], qr[3, 2 * i + 1])
    assert got == (F32(fma(x0, cc, -mul(x1, ss))), F32(fma(x0, ss, mul(x1, cc))))
    # the cache: rotated k and raw v at the slots, slot -1 skipped
    kr = lc.rotate(k.reshape(t, kvh, d), cos[pos], sin[pos], style)
    np.testing.assert_array_equal(kc.reshape(32, kvh, d)[8:12], kr[:4])
    np.testing.assert_array_equal(vc.reshape(32, kvh, d)[8:12], v.reshape(t, kvh, d)[:4])
    assert not kc.reshape(32, kvh, d)[12:].any()
    with pytest.raises(ValueError, match="positions"):
        lc.rope(q, k, v, pos[:3], kc, vc, slots, spec, heads, kvh, d, cache)


def test_softmax_and_dots(rng):
    s = (rng.standard_normal((2, 3, 24)) * 5).astype(F32)
    s[0, 0, 20:] = -np.inf
    p = lc.softmax_rows(s)
    ref = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(p, ref, rtol=1e-6, atol=1e-7)
    row = s[1, 2]                                                   # ggml_vec_soft_max_f32, scalar
    mx = float(row.max())
    e = [v_expf_scalar(float(F32(v) - F32(mx))) for v in row]
    total = sum(hsum8(e[g:g + 8]) for g in range(0, 24, 8))         # each group's sum added in double
    np.testing.assert_array_equal(p[1, 2], np.array(e, F32) * F32(1.0 / total))
    a = rng.standard_normal((2, 70)).astype(F32)
    b = rng.standard_normal(70).astype(F32)
    got = lc._dot_f32(a, b)
    for r in range(2):                                              # ggml_vec_dot_f32, scalar
        acc = [[0.0] * 8 for _ in range(4)]
        for i in range(0, 64, 32):
            for j in range(4):
                for l in range(8):
                    acc[j][l] = fma(a[r, i + 8 * j + l], b[i + 8 * j + l], acc[j][l])
        v = [add(add(acc[0][l], acc[2][l]), add(acc[1][l], acc[3][l])) for l in range(8)]
        t0 = [add(v[l], v[l + 4]) for l in range(4)]
        tot = add(add(t0[0], t0[1]), add(t0[2], t0[3]))
        for i in range(64, 70):
            tot = fma(a[r, i], b[i], tot)
        assert got[r] == F32(tot)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qlens", [(7, 1), (1, 1), (5, 4)])
def test_attention_against_float64(qlens, rng):
    heads, kvh, d, bs = 4, 2, 32, 4
    ctx = [(ql, ql + extra) for ql, extra in zip(qlens, (3, 6))]    # (q_len, seq_len)
    t = sum(ql for ql, _ in ctx)
    nblk = sum(-(-sl // bs) for _, sl in ctx) + 1
    kc = np.zeros((nblk, bs, kvh, d), F32)
    vc = np.zeros((nblk, bs, kvh, d), F32)
    keys, vals, tables = [], [], []
    nxt = 1
    for ql, sl in ctx:
        kk = rng.standard_normal((sl, kvh, d)).astype(F32)
        vv = rng.standard_normal((sl, kvh, d)).astype(F32)
        blocks = list(range(nxt, nxt + -(-sl // bs)))
        nxt += len(blocks)
        for j in range(sl):
            kc[blocks[j // bs], j % bs], vc[blocks[j // bs], j % bs] = kk[j], vv[j]
        keys.append(kk), vals.append(vv), tables.append(blocks)
    width = max(len(b) for b in tables)
    tables = np.array([b + [0] * (width - len(b)) for b in tables], np.int32)
    q = rng.standard_normal((t, heads * d)).astype(F32)
    qsl = np.cumsum([0] + [ql for ql, _ in ctx]).astype(np.int32)
    lens = np.array([sl for _, sl in ctx], np.int32)
    for window, softcap in ((None, None), (3, None), (None, 5.0)):
        out = lc.attention(q, kc, vc, qsl, lens, tables, heads, kvh, 0.25, window, softcap)
        ref = np.zeros((t, heads, d))
        for b, (ql, sl) in enumerate(ctx):
            for i in range(ql):
                p = sl - ql + i
                for h in range(heads):
                    js = [j for j in range(p + 1) if window is None or p - j < window]
                    sc = np.array([q[qsl[b] + i].reshape(heads, d)[h].astype(np.float64) @ keys[b][j, h // 2] * 0.25 for j in js])
                    if softcap is not None:
                        sc = softcap * np.tanh(sc / softcap)
                    w = np.exp(sc - sc.max())
                    ref[qsl[b] + i, h] = (w[:, None] * vals[b][js, h // 2]).sum(0) / w.sum()
        np.testing.assert_allclose(out, ref.reshape(t, -1), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="num_heads"):
        lc.attention(q, kc, vc, qsl, lens, tables, 3, kvh, 0.25)
    with pytest.raises(ValueError, match="query_start_loc"):
        lc.attention(q, kc, vc, qsl[:-1], lens, tables, heads, kvh, 0.25)


# ---------------------------------------------------------------------------------------------
# the backend option
# ---------------------------------------------------------------------------------------------

def test_backend_numerics_option(monkeypatch, rng):
    monkeypatch.delenv("FORGE_CPU_NUMERICS", raising=False)
    assert NumpyBackend().numerics == "f32"
    assert NumpyBackend(numerics="llamacpp").numerics == "llamacpp"
    monkeypatch.setenv("FORGE_CPU_NUMERICS", "llamacpp")
    assert NumpyBackend().numerics == "llamacpp"
    with pytest.raises(ValueError, match="numerics"):
        NumpyBackend(numerics="fast")
    # "f32" is exactly the plain ops of forge/cpu
    from forge.cpu.activation import act_mul
    from forge.cpu.norm import rms_norm

    be = NumpyBackend(numerics="f32")
    x = rng.standard_normal((3, 40)).astype(F32)
    w = rng.standard_normal(40).astype(F32)
    np.testing.assert_array_equal(be.rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5))
    np.testing.assert_array_equal(be.act_mul(x, w[None].repeat(3, 0), "gelu_tanh"),
                                  act_mul(x, w[None].repeat(3, 0), "gelu_tanh"))


@pytest.mark.parametrize("policy", ["f32", "raw"])
def test_backend_packs_fused_weights_and_drops_f32(policy, rng):
    be = NumpyBackend(numerics="llamacpp", weight_policy=policy)
    raws = [random_raw(rng, Q.Q4_1, r, 64) for r in (6, 2, 2)]
    mats = [be.load_qtensor(int(Q.Q4_1), (r.shape[0], 64), r) for r in raws]
    deq = [be.dequantize(m).copy() for m in mats]
    fused = be.fuse_rows(mats)
    x = rng.standard_normal((3, 64)).astype(F32)
    bias = rng.standard_normal(10).astype(F32)
    y = be.linear(x, fused, bias)
    parts = np.concatenate([lc.linear_exact(x, QTensor(int(Q.Q4_1), (r.shape[0], 64), r, "raw"),
                                            lc.pack(Q.Q4_1, r, r.shape[0], 64)) for r in raws], axis=1)
    np.testing.assert_array_equal(y, parts + bias)
    np.testing.assert_array_equal(be.linear(x, mats[1]), parts[:, 6:8])
    assert fused.layout == "raw" and all(m.layout == "raw" for m in mats)   # float32 copies dropped
    assert be.f32_bytes == 0
    for m, dq in zip(mats, deq):
        np.testing.assert_array_equal(be.dequantize(m), dq)
    logits = be.logits(x, mats[0])                 # the output head: float32 BLAS, ~1e-6 of exact
    np.testing.assert_allclose(logits, parts[:, :6], rtol=1e-5, atol=1e-5)


def test_backend_mixed_kernels_and_unknown_bytes(rng):
    be = NumpyBackend(numerics="llamacpp")
    raws = [random_raw(rng, Q.Q4_K, r, 256) for r in (8, 4)]     # repacked + vec_dot kernels
    mats = [be.load_qtensor(int(Q.Q4_K), (r.shape[0], 256), r) for r in raws]
    fused = be.fuse_rows(mats)
    x = rng.standard_normal((5, 256)).astype(F32)
    want = np.concatenate([lc.linear_exact(x, QTensor(int(Q.Q4_K), (r.shape[0], 256), r, "raw"),
                                           lc.pack(Q.Q4_K, r, r.shape[0], 256)) for r in raws], axis=1)
    np.testing.assert_array_equal(be.linear(x, fused), want)
    from forge.cpu.dequant import load_qtensor

    orphan = load_qtensor(int(Q.Q4_1), (2, 32), random_raw(rng, Q.Q4_1, 2, 32), policy="f32")
    with pytest.raises(ValueError, match="w"):
        be.linear(x[:, :32], orphan)


def test_backend_forward_batch_attention_uses_emulation(rng):
    be = NumpyBackend(numerics="llamacpp")
    heads, kvh, d = 2, 1, 32
    kc, vc = be.alloc_kv(4, 4, kvh, d, d)
    t = 6
    q = rng.standard_normal((t, heads * d)).astype(F32)
    k = rng.standard_normal((t, kvh * d)).astype(F32)
    v = rng.standard_normal((t, kvh * d)).astype(F32)
    pos = np.arange(t, dtype=np.int32)
    slots = np.arange(4, 4 + t, dtype=np.int64)
    spec = RopeSpec(rot_dim=d, base=10000.0, style="neox")
    qr = be.rope(q, k, v, pos, kc, vc, slots, spec, heads, kvh, d)
    batch = ForwardBatch(token_ids=np.zeros(t, np.int32), positions=pos,
                         query_start_loc=np.array([0, t], np.int32), seq_lens=np.array([t], np.int32),
                         block_tables=np.array([[1, 2]], np.int32), slot_mapping=slots,
                         logits_indices=np.array([t - 1]), max_query_len=t, max_seq_len=t, num_seqs=1,
                         num_tokens=t)
    out = be.attention(qr, kc, vc, batch, heads, kvh, 0.125)
    want = lc.attention(qr, kc, vc, batch.query_start_loc, batch.seq_lens, batch.block_tables,
                        heads, kvh, 0.125)
    np.testing.assert_array_equal(out, want)
