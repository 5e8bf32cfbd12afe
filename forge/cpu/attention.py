"""Paged causal attention with GQA, sliding window and logit softcap, through batched BLAS.

Sequences with one query (decode) are done together: their K/V are gathered through the block
tables into one padded batch and masked by length. Sequences with more queries (prefill, chunked
prefill) are done one by one, all heads at once, tiling the queries so that the score matrix stays
under `SCORE_BYTES`; each tile reads only the keys its queries can see.
"""
from __future__ import annotations

import math

import numpy as np

SCORE_BYTES = 1 << 20       # score tile budget of a prefill sequence (small tiles: cache-resident)
DECODE_BYTES = 4 << 20      # gathered K+V budget of one batch of decode sequences


def _softmax_av(s: np.ndarray, vh: np.ndarray, bias: np.ndarray | None, softcap: float | None,
                s_view: np.ndarray | None = None) -> np.ndarray:
    """s [..., M, S] scaled scores (overwritten) -> softmax(s) @ vh [..., M, Dv].

    `bias` (0 / -inf) is added to `s_view`, a view of the same memory shaped to broadcast with it.
    """
    if softcap is not None:
        s *= np.float32(1.0 / softcap)
        np.tanh(s, out=s)
        s *= np.float32(softcap)
    if bias is not None:
        sv = s if s_view is None else s_view
        sv += bias
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    denom = s.sum(axis=-1, keepdims=True)
    o = np.matmul(s, vh)
    o /= denom
    return o


def _gather(cache: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """cache[blocks]: a view when the blocks are consecutive (as fresh allocations often are)."""
    n = blocks.shape[0]
    b0 = int(blocks[0]) if n else 0
    if (n and b0 >= 0 and b0 + n <= cache.shape[0] and int(blocks[-1]) == b0 + n - 1
            and (n < 3 or bool((np.diff(blocks) == 1).all()))):
        return cache[b0:b0 + n]
    return cache[blocks]


def _prefill_one(out: np.ndarray, q: np.ndarray, k_cache, v_cache, blocks: np.ndarray, seq_len: int,
                 num_kv_heads: int, group: int, scale: float, window: int | None,
                 softcap: float | None) -> None:
    """One sequence. q [L, H, D] (its queries), out [L, H, Dv] (written)."""
    q_len = q.shape[0]
    bs = k_cache.shape[1]
    d, dv = k_cache.shape[3], v_cache.shape[3]
    h = num_kv_heads * group
    p0 = seq_len - q_len                                  # position of query 0
    first = 0 if window is None else max(0, p0 - window + 1)
    b0, b1 = first // bs, -(-seq_len // bs)
    kv_off = b0 * bs                                      # position of gathered key 0
    k = _gather(k_cache, blocks[b0:b1]).reshape(-1, num_kv_heads, d)
    v = _gather(v_cache, blocks[b0:b1]).reshape(-1, num_kv_heads, dv)
    # queries as [Hkv, L*group, D], scaled once
    qg = q.reshape(q_len, num_kv_heads, group, d).transpose(1, 0, 2, 3) * np.float32(scale)
    qg = qg.reshape(num_kv_heads, q_len * group, d)
    og = np.empty((num_kv_heads, q_len, group, dv), np.float32)
    # queries per tile: a tile of n queries sees at most seq_len - first keys, or window + n - 1
    c = SCORE_BYTES // (4 * h)
    if window is None:
        tile = c // max(seq_len - first, 1)
    else:
        tile = int((math.sqrt(window * window + 4 * c) - window) / 2)    # n * (window + n) <= c
    tile = max(1, min(q_len, tile))
    for i0 in range(0, q_len, tile):
        i1 = min(q_len, i0 + tile)
        pa, pb = p0 + i0, p0 + i1 - 1                    # positions of the tile's first/last query
        lo = first if window is None else max(first, pa - window + 1)
        hi = pb + 1                                       # keys [lo, hi) in positions
        kt = k[lo - kv_off:hi - kv_off].transpose(1, 2, 0)     # [Hkv, D, S]
        vt = v[lo - kv_off:hi - kv_off].transpose(1, 0, 2)     # [Hkv, S, Dv]
        s = np.matmul(qg[:, i0 * group:i1 * group], kt)        # [Hkv, n*group, S]
        n = i1 - i0
        qpos = np.arange(pa, pb + 1)[:, None]
        kpos = np.arange(lo, hi)[None, :]
        allowed = kpos <= qpos
        if window is not None:
            allowed &= qpos - kpos < window
        bias = None
        if not allowed.all():
            bias = np.where(allowed, np.float32(0), np.float32(-np.inf))[None, :, None, :]
        s4 = s.reshape(num_kv_heads, n, group, hi - lo)           # a view: bias broadcasts here
        o = _softmax_av(s, vt, bias, softcap, s4)                 # [Hkv, n*group, Dv]
        og[:, i0:i1] = o.reshape(num_kv_heads, n, group, dv)
    out[...] = og.transpose(1, 0, 2, 3).reshape(q_len, h, dv)


def _decode_many(out: np.ndarray, q: np.ndarray, k_cache, v_cache, tables: np.ndarray,
                 lens: np.ndarray, num_kv_heads: int, group: int, scale: float,
                 window: int | None, softcap: float | None) -> None:
    """B sequences with one query each. q [B, H, D], out [B, H, Dv] (written)."""
    nseq = q.shape[0]
    bs = k_cache.shape[1]
    d, dv = k_cache.shape[3], v_cache.shape[3]
    per_key = num_kv_heads * (d + dv) * k_cache.itemsize
    step = max(1, DECODE_BYTES // max(1, per_key * int(lens.max())))
    for s0 in range(0, nseq, step):
        s1 = min(nseq, s0 + step)
        n = s1 - s0
        ln = lens[s0:s1]
        lmin, lmax = int(ln.min()), int(ln.max())
        first = 0 if window is None else max(0, lmin - window)    # earliest key any row sees
        b0, b1 = first // bs, -(-lmax // bs)
        if n == 1:
            kb, vb = _gather(k_cache, tables[s0, b0:b1]), _gather(v_cache, tables[s0, b0:b1])
        else:
            bt = tables[s0:s1, b0:b1]
            kb, vb = k_cache[bt], v_cache[bt]
        lo, hi = first - b0 * bs, lmax - b0 * bs
        k = kb.reshape(n, -1, num_kv_heads, d)[:, lo:hi]            # keys at [first, lmax)
        v = vb.reshape(n, -1, num_kv_heads, dv)[:, lo:hi]
        bias = None
        if lmin != lmax or (window is not None and lmax - window > first):
            kpos = np.arange(first, lmax)[None, :]
            allowed = kpos < ln[:, None]
            if window is not None:
                allowed &= kpos >= ln[:, None] - window
            bias = np.where(allowed, np.float32(0), np.float32(-np.inf))[:, None, None, :]
        qg = q[s0:s1].reshape(n, num_kv_heads, group, d) * np.float32(scale)
        s = np.matmul(qg, k.transpose(0, 2, 3, 1))             # [n, Hkv, group, S]
        o = _softmax_av(s, v.transpose(0, 2, 1, 3), bias, softcap)   # [n, Hkv, group, Dv]
        out[s0:s1] = o.reshape(n, num_kv_heads * group, dv)


def check_args(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads: int,
               num_kv_heads: int, sliding_window: int | None, softcap: float | None):
    """Validate `attention`'s arguments (shared with forge.cpu.llamacpp.attention); ValueError
    naming the argument. Returns (d, dv, t, qsl int64, seq_lens int64, block_tables, qlens)."""
    if k_cache.ndim != 4 or v_cache.ndim != 4 or k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache/v_cache: expected [num_blocks, block_size, Hkv, dim] each, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.shape[2] != num_kv_heads:
        raise ValueError(f"k_cache: has {k_cache.shape[2]} kv heads, num_kv_heads is {num_kv_heads}")
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads: {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    d, dv = k_cache.shape[3], v_cache.shape[3]
    t = q.shape[0]
    if q.shape != (t, num_heads * d):
        raise ValueError(f"q: expected shape ({t}, {num_heads * d}), got {tuple(q.shape)}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window: expected >= 1 or None, got {sliding_window}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap: expected > 0 or None, got {softcap}")
    qsl = np.asarray(query_start_loc).astype(np.int64, copy=False)
    lens = np.asarray(seq_lens).astype(np.int64, copy=False)
    tables = np.asarray(block_tables)
    nseq = lens.shape[0]
    if qsl.shape != (nseq + 1,) or (nseq and (qsl[0] != 0 or qsl[-1] != t)):
        raise ValueError(f"query_start_loc: expected {nseq + 1} offsets from 0 to {t}, got {qsl.tolist()}")
    qlens = np.diff(qsl)
    if nseq and (qlens.min() < 0 or (qlens > lens).any()):
        raise ValueError("seq_lens: every sequence needs 0 <= q_len <= seq_len")
    bs = k_cache.shape[1]
    if tables.ndim != 2 or tables.shape[0] != nseq or (nseq and tables.shape[1] * bs < lens.max()):
        raise ValueError(f"block_tables: expected [{nseq}, >= max(seq_lens)/block_size], got {tuple(tables.shape)}")
    return d, dv, t, qsl, lens, tables, qlens


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, query_start_loc: np.ndarray,
              seq_lens: np.ndarray, block_tables: np.ndarray, num_heads: int, num_kv_heads: int,
              scale: float, sliding_window: int | None = None, softcap: float | None = None) -> np.ndarray:
    """q [T, H*D] -> float32 [T, H*Dv]. Sequence b's queries are its last q_len tokens; query i
    sits at position seq_lens[b] - q_len + i and sees keys j <= p (and p - j < sliding_window)."""
    d, dv, t, qsl, lens, tables, qlens = check_args(
        q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, num_heads, num_kv_heads,
        sliding_window, softcap)
    nseq = lens.shape[0]
    group = num_heads // num_kv_heads
    out = np.empty((t, num_heads, dv), np.float32)
    q3 = q.reshape(t, num_heads, d)
    decode = np.flatnonzero(qlens == 1)
    if decode.size == nseq and nseq:                       # pure decode: tokens are the sequences
        _decode_many(out, q3, k_cache, v_cache, tables, lens, num_kv_heads, group, scale,
                     sliding_window, softcap)
    else:
        if decode.size > 1:
            tok = qsl[decode]
            o = np.empty((decode.size, num_heads, dv), np.float32)
            _decode_many(o, q3[tok], k_cache, v_cache, tables[decode], lens[decode], num_kv_heads,
                         group, scale, sliding_window, softcap)
            out[tok] = o
        for b in np.flatnonzero(qlens > (1 if decode.size > 1 else 0)):
            s0, s1 = int(qsl[b]), int(qsl[b + 1])
            _prefill_one(out[s0:s1], q3[s0:s1], k_cache, v_cache, tables[b], int(lens[b]),
                         num_kv_heads, group, scale, sliding_window, softcap)
    return out.reshape(t, num_heads * dv)
