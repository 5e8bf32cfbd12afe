"""sample on the GPU: penalties, temperature, top-k, top-p, min-p and a seeded draw, with no host
sync (no .item(), no data-dependent shapes). Same meaning as forge/cpu/sampling.py.

Launches (every one unconditional on the data; branches happen inside the kernels, per row):
1. penalties, only when the batch carries token histories (prompt_tokens / output_tokens with
   more than 0 columns): a float32 copy of the logits, `_penalty_count_kernel` (atomic counts of
   output tokens into an [S, V] int32 buffer) and `_penalty_apply_kernel` (each history token's
   logit -> repetition, then -= presence + frequency * count; duplicates write the same value).
2. `_sample_prep_kernel`, one program per row, streams the row in chunks of BLOCK:
   pass 1: max / log-sum-exp of the penalised logits l (logprobs), first argmax (greedy), and for
     sampled rows z = l / T per chunk: (max z, sum exp(z - max z)) kept for step 4.
   For rows that need an order (top-k or top-p on):
   pass 2: a histogram of d = zmax - z in NB bins of 1/BPN nats. From it, a bin J_end such that
     the tokens with bin <= J_end (the candidates) are a prefix of the descending order that
     contains every kept token and at least one dropped one (top-k: >= k + 1 tokens; top-p:
     enough mass by a lower bound; min-p: a bin surely below min_p * max).
   pass 3: if the candidates fit in CAND, write their keys ((orderable z) << 32 | ~id) to a
     per-row buffer, padded with INT64_MIN.
3. torch.sort of the candidate keys, descending (one small on-device sort, [S, CAND]): the order
   is descending z, ties by ascending id, exactly forge/cpu's order.
4. `_sample_draw_kernel`, one program per row:
   - greedy rows: the argmax;
   - rows with no order needed: inverse CDF in vocab order, from the per-chunk sums of pass 1
     (one more pass when min-p is on), then one chunk re-read;
   - ordered rows whose candidates fit: top-k / top-p / min-p on the sorted prefix in registers,
     inverse CDF in that order;
   - otherwise (a kept set larger than CAND, e.g. top-k > CAND): exact value thresholds by
     bisection over full passes (slow but rare; in this path tokens whose z ties exactly with a
     threshold value are all kept, and a draw landing in a group of exactly tied values takes
     the lowest id).
   The uniform u of each row is `uniform_from_seed(seed, step)` of forge/cpu/sampling.py,
   reproduced bit for bit (splitmix64 on uint64); sums here are float32 where the CPU uses
   float64, so a draw that falls within float32 rounding of a CDF step may pick a neighbour.
   Logprobs: log-softmax of the penalised logits (before temperature) at the chosen token.

Parameter values are not validated on the device (that would need a host sync): top_p is used
as given (<= 0 keeps only the top token, >= 1 is off), top_k <= 0 or >= V is off, min_p <= 0 is
off, and history token ids outside [0, V) are ignored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from forge.kernels import pdl, tuning
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.runtime.backend import SamplingBatch

_U64 = 1 << 64
_GAMMA = tl.constexpr(0x9E3779B97F4A7C15 - _U64)   # splitmix64 constants as two's-complement int64
_MIX1 = tl.constexpr(0xBF58476D1CE4E5B9 - _U64)
_MIX2 = tl.constexpr(0x94D049BB133111EB - _U64)
_I64_MIN = tl.constexpr(-(1 << 63))
_LOW32 = tl.constexpr(0xFFFFFFFF)

NB_BINS = 512        # histogram bins of d = zmax - z
BINS_PER_NAT = 16    # bin width 1/16 nat: the last bin (>= 31.9 nats, and -inf) is a catch-all


# ---------------------------------------------------------------------------------------------
# small helpers


@triton.jit
def _mix64(z):
    z = (z ^ (z >> 30)) * tl.full((), _MIX1, tl.int64).to(tl.uint64, bitcast=True)
    z = (z ^ (z >> 27)) * tl.full((), _MIX2, tl.int64).to(tl.uint64, bitcast=True)
    return z ^ (z >> 31)


@triton.jit
def _uniform(seed, step):
    """forge.cpu.sampling.uniform_from_seed for one row: float64 in [0, 1)."""
    g = tl.full((), _GAMMA, tl.int64).to(tl.uint64, bitcast=True)
    key = _mix64(seed.to(tl.uint64, bitcast=True) + g)
    r = _mix64(key + (step.to(tl.uint64, bitcast=True) + 1) * g)
    return (r >> 11).to(tl.float64) * (1.0 / 9007199254740992.0)


@triton.jit
def _fkey(z):
    """float32 -> int32 key with the same order (for finite and infinite values)."""
    b = z.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _unfkey(k):
    k = k.to(tl.int32)
    return tl.where(k >= 0, k, k ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _pass_ge(x_ptr, V, temp, zmax, t, cut, min_p, COUNT: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over a row: F(t) = count or mass exp(z - zmax) of the tokens with z >= t that
    are also kept (z >= cut and exp(z - zmax) >= min_p); the smallest such z >= t; the largest
    kept z < t; and the smallest id whose z == t (V if none)."""
    f = tl.zeros([BLOCK], dtype=tl.float32)
    a = tl.full([BLOCK], float("inf"), tl.float32)
    b = tl.full([BLOCK], float("-inf"), tl.float32)
    first = tl.full([BLOCK], V, tl.int32)
    for c0 in range(0, V, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        l = tl.load(x_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        z = tl.math.div_rn(l, temp)
        p = tl.where(z == float("-inf"), 0.0, tl.exp(z - zmax))
        kept = (cols < V) & (z >= cut) & (p >= min_p)
        ge = kept & (z >= t)
        if COUNT:
            f += tl.where(ge, 1.0, 0.0)
        else:
            f += tl.where(ge, p, 0.0)
        a = tl.minimum(a, tl.where(ge, z, float("inf")))
        b = tl.maximum(b, tl.where(kept & (z < t), z, float("-inf")))
        first = tl.minimum(first, tl.where(kept & (z == t), cols, V))
    return tl.sum(f, axis=0), tl.min(a, axis=0), tl.max(b, axis=0), tl.min(first, axis=0)


@triton.jit
def _search(x_ptr, V, temp, zmax, lo, hi, target, cut, min_p, COUNT: tl.constexpr,
            STRICT: tl.constexpr, BLOCK: tl.constexpr):
    """The largest data value t in [lo, hi] with F(t) >= target (> target if STRICT), where
    F is `_pass_ge`'s; lo must be a data value that satisfies it. Bisection on the order keys,
    snapping both ends to data values: at most ~32 passes."""
    it = 0
    while (lo < hi) & (it < 70):
        klo = _fkey(lo).to(tl.int64)
        khi = _fkey(hi).to(tl.int64)
        mid = _unfkey(klo + (khi - klo + 1) // 2)
        f, a, b, _ = _pass_ge(x_ptr, V, temp, zmax, mid, cut, min_p, COUNT, BLOCK)
        if STRICT:
            ok = f > target
        else:
            ok = f >= target
        if ok:
            lo = tl.where(a == float("inf"), hi, a)   # no token >= mid (target <= 0): any value
        else:
            hi = b
        it += 1
    return lo


# ---------------------------------------------------------------------------------------------
# penalties


@triton.jit
def _penalty_count_kernel(
    out_ptr,      # [S, Lo] int32 output-token history, padded with -1 (row stride stride_o)
    cnt_ptr,      # [S, V] int32 counts, zeroed by the caller
    Lo, V, stride_o,
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tok = tl.load(out_ptr + s * stride_o + j, mask=j < Lo, other=-1)
    ok = (tok >= 0) & (tok < V)
    tl.atomic_add(cnt_ptr + s * V + tl.where(ok, tok, 0), tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit
def _penalty_apply_kernel(
    x_ptr,        # [S, V] original logits (row stride stride_x), any float dtype
    pen_ptr,      # [S, V] float32 copy of the logits, penalised here in place
    pr_ptr,       # [S, Lp] int32 prompt tokens, -1 padded (row stride stride_p)
    out_ptr,      # [S, Lo] int32 output tokens, -1 padded (row stride stride_o)
    cnt_ptr,      # [S, V] int32 output-token counts (unused without HAS_OUT)
    rep_ptr, pres_ptr, freq_ptr,   # [S] float32
    Lp, Lo, V, stride_x, stride_p, stride_o,
    HAS_OUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_p = j < Lp
    tok = tl.load(pr_ptr + s * stride_p + j, mask=in_p, other=-1)
    if HAS_OUT:
        jo = j - Lp
        in_o = (jo >= 0) & (jo < Lo)
        tok = tl.where(in_p, tok, tl.load(out_ptr + s * stride_o + jo, mask=in_o, other=-1))
    ok = (tok >= 0) & (tok < V)
    tok = tl.where(ok, tok, 0)
    val = tl.load(x_ptr + s * stride_x + tok, mask=ok, other=0.0).to(tl.float32)
    rep = tl.load(rep_ptr + s).to(tl.float32)
    val = tl.where(val > 0, tl.math.div_rn(val, tl.full(val.shape, 1.0, tl.float32) * rep), val * rep)
    if HAS_OUT:
        c = tl.load(cnt_ptr + s * V + tok, mask=ok, other=0)
        pres = tl.load(pres_ptr + s).to(tl.float32)
        freq = tl.load(freq_ptr + s).to(tl.float32)
        val = tl.where(c > 0, val - (pres + freq * c.to(tl.float32)), val)
    tl.store(pen_ptr + s * V + tok, val, mask=ok)


# ---------------------------------------------------------------------------------------------
# sampling


@triton.jit
def _sample_prep_kernel(
    x_ptr,        # [S, V] float32 penalised logits, row stride stride_x
    temp_ptr,     # [S] float32 temperature (<= 0: greedy)
    topk_ptr,     # [S] int32
    topp_ptr,     # [S] float32
    minp_ptr,     # [S] float32
    stats_ptr,    # [S, 2, NCH] float32 out: per-chunk max z and sum exp(z - max z)
    rowf_ptr,     # [S, 4] float32 out: lse of l, zmax, Z = sum exp(z - zmax), zmin
    rowi_ptr,     # [S, 4] int64 out: argmax of l, number of candidates (-1: did not fit), J_end
    keys_ptr,     # [S, CAND] int64 out: candidate keys, INT64_MIN padded
    ids_ptr,      # [S] int64 out (ALL_GREEDY only)
    lp_ptr,       # [S] float32 out (ALL_GREEDY and WANT_LP only)
    V, stride_x,
    ALL_GREEDY: tl.constexpr, WANT_LP: tl.constexpr,
    BLOCK: tl.constexpr, NCH: tl.constexpr, NB: tl.constexpr, BPN: tl.constexpr,
    CAND: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride_x
    if ALL_GREEDY:
        temp = 0.0
    else:
        temp = tl.load(temp_ptr + row).to(tl.float32)
    greedy = temp <= 0.0
    t_safe = tl.where(greedy, 1.0, temp)
    ch = tl.arange(0, NCH)
    lane = tl.arange(0, BLOCK)

    # ---- pass 1 ------------------------------------------------------------------------------
    lmax = float("-inf")
    lmin = float("inf")
    s1 = 0.0
    best = 0
    m_vec = tl.full([NCH], float("-inf"), tl.float32)
    s_vec = tl.zeros([NCH], dtype=tl.float32)
    for c in range(0, (V + BLOCK - 1) // BLOCK):
        cols = c * BLOCK + lane
        l = tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        cm = tl.max(l, axis=0)
        ci = tl.argmax(l, axis=0, tie_break_left=True)
        if WANT_LP:
            nm = tl.maximum(lmax, cm)
            s1 = s1 * tl.where(lmax == float("-inf"), 0.0, tl.exp(lmax - nm)) + \
                tl.sum(tl.where(l == float("-inf"), 0.0, tl.exp(l - nm)), axis=0)
        if cm > lmax:
            best = c * BLOCK + ci
            lmax = cm
        if temp > 0.0:
            z = tl.math.div_rn(l, t_safe)
            zm = tl.math.div_rn(cm, t_safe)         # = max(z): rounding is monotonic
            zs = tl.sum(tl.where(z == float("-inf"), 0.0, tl.exp(z - zm)), axis=0)
            m_vec = tl.where(ch == c, zm, m_vec)
            s_vec = tl.where(ch == c, zs, s_vec)
            lmin = tl.minimum(lmin, tl.min(tl.where(cols < V, l, float("inf")), axis=0))
    lse = 0.0
    if WANT_LP:
        lse = lmax + tl.log(s1)
    if ALL_GREEDY:
        tl.store(ids_ptr + row, best.to(tl.int64))
        if WANT_LP:
            lb = tl.load(xr + best).to(tl.float32)
            tl.store(lp_ptr + row, lb - lse)
    else:
        zmax = tl.max(m_vec, axis=0)
        zsum = tl.sum(s_vec * tl.where(m_vec == float("-inf"), 0.0, tl.exp(m_vec - zmax)), axis=0)
        tl.store(stats_ptr + row * 2 * NCH + ch, m_vec)
        tl.store(stats_ptr + row * 2 * NCH + NCH + ch, s_vec)
        tl.store(rowf_ptr + row * 4 + 0, lse)
        tl.store(rowf_ptr + row * 4 + 1, zmax)
        tl.store(rowf_ptr + row * 4 + 2, zsum)
        tl.store(rowf_ptr + row * 4 + 3, tl.math.div_rn(lmin, t_safe))
        tl.store(rowi_ptr + row * 4 + 0, best.to(tl.int64))

        top_k = tl.load(topk_ptr + row).to(tl.int32)
        top_p = tl.load(topp_ptr + row).to(tl.float32)
        min_p = tl.load(minp_ptr + row).to(tl.float32)
        use_k = (top_k > 0) & (top_k < V)
        use_p = top_p < 1.0
        use_m = min_p > 0.0
        n_cand = -1
        j_end = NB
        if (temp > 0.0) & (use_k | use_p):
            # ---- pass 2: histogram of d = zmax - z -------------------------------------------
            counts = tl.zeros([NB], dtype=tl.int32)
            for c in range(0, (V + BLOCK - 1) // BLOCK):
                cols = c * BLOCK + lane
                l = tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
                z = tl.math.div_rn(l, t_safe)
                fb = (zmax - z) * BPN
                bins = tl.where(fb < NB - 1, fb, NB - 1).to(tl.int32)
                counts += tl.histogram(bins, NB, mask=cols < V)
            jb = tl.arange(0, NB)
            cum = tl.cumsum(counts, axis=0)                      # tokens in bins <= j
            nonempty = counts > 0
            # top-k: the first bin where at least k + 1 tokens are in
            j_k = tl.sum(tl.where(cum < top_k + 1, 1, 0), axis=0)
            # top-p: lower bound of the mass in bins <= j; then the next non-empty bin
            lbm = tl.cumsum(counts.to(tl.float32) * tl.exp(-(jb + 1).to(tl.float32) / BPN), axis=0)
            j_ps = tl.sum(tl.where(lbm < top_p * zsum, 1, 0), axis=0)
            j_p = tl.min(tl.where(nonempty & (jb > j_ps), jb, NB), axis=0)
            # min-p: the first non-empty bin whose tokens all have p < min_p
            mbin = (-tl.log(tl.maximum(min_p, 1e-30)) + 0.01) * BPN
            j_m = tl.min(tl.where(nonempty & (jb.to(tl.float32) >= mbin), jb, NB), axis=0)
            if use_k:
                j_end = j_k
                if (not use_p) & use_m:
                    j_end = tl.minimum(j_end, j_m)
            else:
                j_end = j_p
                if use_m:
                    j_end = tl.minimum(j_end, j_m)
            n_c = tl.sum(tl.where(jb <= j_end, counts, 0), axis=0)
            if n_c <= CAND:
                # ---- pass 3: candidate keys ----------------------------------------------------
                base = 0
                for c in range(0, (V + BLOCK - 1) // BLOCK):
                    cols = c * BLOCK + lane
                    l = tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
                    z = tl.math.div_rn(l, t_safe)
                    fb = (zmax - z) * BPN
                    bins = tl.where(fb < NB - 1, fb, NB - 1).to(tl.int32)
                    is_c = (cols < V) & (bins <= j_end)
                    pos = base + tl.cumsum(is_c.to(tl.int32), axis=0) - 1
                    low = tl.full((), _LOW32, tl.int64)
                    key = (_fkey(z).to(tl.int64) << 32) | (low - cols.to(tl.int64))
                    tl.store(keys_ptr + row * CAND + pos, key, mask=is_c)
                    base += tl.sum(is_c.to(tl.int32), axis=0)
                n_cand = n_c
        kk = tl.arange(0, CAND)
        tl.store(keys_ptr + row * CAND + kk, tl.full([CAND], _I64_MIN, tl.int64), mask=kk >= n_cand)
        tl.store(rowi_ptr + row * 4 + 1, n_cand.to(tl.int64))
        tl.store(rowi_ptr + row * 4 + 2, j_end.to(tl.int64))


@triton.jit
def _sample_draw_kernel(
    x_ptr,        # [S, V] float32 penalised logits, row stride stride_x
    temp_ptr,     # [S] float32
    topk_ptr,     # [S] int32
    topp_ptr,     # [S] float32
    minp_ptr,     # [S] float32
    seed_ptr,     # [S] int64
    step_ptr,     # [S] int64
    stats_ptr,    # [S, 2, NCH] float32 from the prep kernel
    rowf_ptr,     # [S, 4] float32 from the prep kernel
    rowi_ptr,     # [S, 4] int64 from the prep kernel
    keys_ptr,     # [S, CAND] int64 candidate keys sorted descending
    ids_ptr,      # [S] int64 out
    lp_ptr,       # [S] float32 out (WANT_LP only)
    V, stride_x,
    WANT_LP: tl.constexpr, BLOCK: tl.constexpr, NCH: tl.constexpr, CAND: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride_x
    temp = tl.load(temp_ptr + row).to(tl.float32)
    greedy = temp <= 0.0
    t_safe = tl.where(greedy, 1.0, temp)
    lse = tl.load(rowf_ptr + row * 4 + 0)
    tok = tl.load(rowi_ptr + row * 4 + 0)          # argmax
    if temp > 0.0:
        zmax = tl.load(rowf_ptr + row * 4 + 1)
        zsum = tl.load(rowf_ptr + row * 4 + 2)
        zmin = tl.load(rowf_ptr + row * 4 + 3)
        n_cand = tl.load(rowi_ptr + row * 4 + 1)
        top_k = tl.load(topk_ptr + row).to(tl.int32)
        top_p = tl.load(topp_ptr + row).to(tl.float32)
        min_p = tl.load(minp_ptr + row).to(tl.float32)
        use_k = (top_k > 0) & (top_k < V)
        use_p = top_p < 1.0
        u = _uniform(tl.load(seed_ptr + row), tl.load(step_ptr + row))
        lane = tl.arange(0, BLOCK)
        if ((top_k <= 0) | (top_k >= V)) & (top_p >= 1.0):
            # ---- vocab order: per-chunk sums, then one chunk re-read ---------------------------
            ch = tl.arange(0, NCH)
            if min_p > 0.0:
                s_vec = tl.zeros([NCH], dtype=tl.float32)
                for c in range(0, (V + BLOCK - 1) // BLOCK):
                    cols = c * BLOCK + lane
                    l = tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
                    z = tl.math.div_rn(l, t_safe)
                    p = tl.where(z == float("-inf"), 0.0, tl.exp(z - zmax))
                    q = tl.where((cols < V) & (p >= min_p), p, 0.0)
                    s_vec = tl.where(ch == c, tl.sum(q, axis=0), s_vec)
            else:
                m_vec = tl.load(stats_ptr + row * 2 * NCH + ch)
                scale = tl.where(m_vec == float("-inf"), 0.0, tl.exp(m_vec - zmax))
                s_vec = tl.load(stats_ptr + row * 2 * NCH + NCH + ch) * scale
            csum = tl.cumsum(s_vec, axis=0)
            total = tl.sum(s_vec, axis=0)
            target = (u * total.to(tl.float64)).to(tl.float32)
            c_last = tl.max(tl.where(s_vec > 0.0, ch, 0), axis=0)
            cs = tl.minimum(tl.sum(tl.where(csum <= target, 1, 0), axis=0), c_last)
            prefix = tl.sum(tl.where(ch < cs, s_vec, 0.0), axis=0)
            cols = cs * BLOCK + lane
            l = tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            z = tl.math.div_rn(l, t_safe)
            p = tl.where(z == float("-inf"), 0.0, tl.exp(z - zmax))
            q = tl.where((cols < V) & (p >= min_p), p, 0.0)
            cdf = prefix + tl.cumsum(q, axis=0)
            i = tl.sum(tl.where((cdf <= target) & (cols < V), 1, 0), axis=0)
            i_last = tl.max(tl.where(q > 0.0, lane, 0), axis=0)
            tok = (cs * BLOCK + tl.minimum(i, i_last)).to(tl.int64)
        else:
            keff = tl.where(use_k, top_k, V)
            done = 0
            if n_cand >= 0:
                # ---- sorted candidates in registers ------------------------------------------
                r = tl.arange(0, CAND)
                key = tl.load(keys_ptr + row * CAND + r)
                valid = r < n_cand
                z = _unfkey(key >> 32)
                low = tl.full((), _LOW32, tl.int64)
                ids = low - (key & low)
                p = tl.where(valid, tl.where(z == float("-inf"), 0.0, tl.exp(z - zmax)), 0.0)
                pk = tl.where(r < keff, p, 0.0)
                zk = tl.where(use_k, tl.sum(pk, axis=0), zsum)
                pn = pk / zk
                excl = tl.cumsum(pn, axis=0) - pn
                p_lim = tl.where(top_p >= 1.0, float("inf"), top_p)   # top-p off: no limit
                kept = valid & (r < keff) & (excl < p_lim) & (p >= min_p)
                n_kept = tl.sum(kept.to(tl.int32), axis=0)
                if (n_kept < n_cand) | (n_cand >= V):
                    q = tl.where(kept, p, 0.0)
                    cdf = tl.cumsum(q, axis=0)
                    total = tl.sum(q, axis=0)
                    target = (u * total.to(tl.float64)).to(tl.float32)
                    i = tl.sum(tl.where(kept & (cdf <= target), 1, 0), axis=0)
                    i = tl.minimum(i, tl.max(tl.where(q > 0.0, r, 0), axis=0))
                    tok = tl.sum(tl.where(r == i, ids, 0), axis=0)
                    done = 1
            if done == 0:
                # ---- exact thresholds by bisection over full passes (rare) ------------------
                cut = float("-inf")
                if use_k:
                    cut = _search(xr, V, t_safe, zmax, zmin, zmax, keff.to(tl.float32),
                                  float("-inf"), 0.0, True, False, BLOCK)
                    zk, _a, _b, _f = _pass_ge(xr, V, t_safe, zmax, cut, float("-inf"), 0.0,
                                              False, BLOCK)
                else:
                    zk = zsum
                if use_p:
                    lo = tl.where(use_k, cut, zmin)
                    cut = _search(xr, V, t_safe, zmax, lo, zmax, top_p * zk, cut, 0.0,
                                  False, False, BLOCK)
                mp = tl.maximum(min_p, 0.0)
                total, kmin, _b, _f = _pass_ge(xr, V, t_safe, zmax, cut, cut, mp, False, BLOCK)
                target = (u * total.to(tl.float64)).to(tl.float32)
                w = _search(xr, V, t_safe, zmax, kmin, zmax, target, cut, mp, False, True, BLOCK)
                _f, _a, _b, first = _pass_ge(xr, V, t_safe, zmax, w, cut, mp, False, BLOCK)
                tok = tl.minimum(first, V - 1).to(tl.int64)
    tl.store(ids_ptr + row, tok.to(tl.int64))
    if WANT_LP:
        lt = tl.load(xr + tok).to(tl.float32)
        tl.store(lp_ptr + row, lt - lse)


# ---------------------------------------------------------------------------------------------
# launcher


def _vec(name: str, x, s: int, dtype: torch.dtype, device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.reshape(-1)
    if x.shape[0] != s:
        raise ValueError(f"{name}: expected {s} values (one per logits row), got {x.shape[0]}")
    return x.to(device=device, dtype=dtype, non_blocking=True).contiguous()


def _tokens(name: str, x, s: int, device) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.numel() == 0:
        return None
    if x.ndim != 2 or x.shape[0] != s:
        raise ValueError(f"{name}: expected [{s}, L] padded with -1, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected int32 token ids, got {x.dtype}")
    x = x.to(device=device, dtype=torch.int32, non_blocking=True)
    if x.stride(1) != 1:
        x = x.contiguous()
    return x


def apply_penalties(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """A float32 copy of logits [S, V] with repetition (prompt + output tokens), then presence /
    frequency (output tokens) penalties applied; `logits` itself if there is no history."""
    s, v = logits.shape
    dev = logits.device
    prompt = _tokens("prompt_tokens", sb.prompt_tokens, s, dev)
    out = _tokens("output_tokens", sb.output_tokens, s, dev)
    if prompt is None and out is None:
        return logits
    pen = logits.to(torch.float32, copy=True).contiguous()
    rep = _vec("repetition_penalty", sb.repetition_penalty, s, torch.float32, dev)
    pres = _vec("presence_penalty", sb.presence_penalty, s, torch.float32, dev)
    freq = _vec("frequency_penalty", sb.frequency_penalty, s, torch.float32, dev)
    lp = 0 if prompt is None else prompt.shape[1]
    lo = 0 if out is None else out.shape[1]
    block = 256
    if out is not None:
        counts = torch.zeros((s, v), dtype=torch.int32, device=dev)
        _penalty_count_kernel[(s, triton.cdiv(lo, block))](out, counts, lo, v, out.stride(0),
                                                           BLOCK=block, num_warps=4)
    else:
        counts = pen  # unused
    dummy = out if prompt is None else prompt
    _penalty_apply_kernel[(s, triton.cdiv(lp + lo, block))](
        logits, pen, prompt if prompt is not None else dummy, out if out is not None else dummy,
        counts, rep, pres, freq, lp, lo, v, logits.stride(0),
        prompt.stride(0) if prompt is not None else 0, out.stride(0) if out is not None else 0,
        HAS_OUT=out is not None, BLOCK=block, num_warps=4)
    return pen


def _default_config(v: int) -> dict:
    # CAND >= V means the candidates always fit (the bisection fallback is never needed)
    p2 = triton.next_power_of_2(v)
    return {"BLOCK": min(4096, p2), "CAND": min(4096, p2), "num_warps": 16 if p2 >= 4096 else 4,
            "num_stages": 1}


def _check_logits(logits) -> tuple[int, int]:
    """(S, V) of a logits tensor [S, V] in float32/float16/bfloat16; ValueError otherwise."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits: expected a 2-D [S, V] tensor, got {getattr(logits, 'shape', type(logits))}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits: expected float32, float16 or bfloat16, got {logits.dtype}")
    s, v = logits.shape
    if v == 0 or v >= (1 << 31) - 1:
        raise ValueError(f"logits: vocabulary size {v} out of range")
    return s, v


def sample(logits: torch.Tensor, sb: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [S, V] float32 -> (token ids int64 [S], logprobs float32 [S] or None); see the
    module docstring. Everything stays on the device."""
    s, v = _check_logits(logits)
    dev = logits.device
    ids = torch.empty(s, dtype=torch.int64, device=dev)
    lps = torch.empty(s, dtype=torch.float32, device=dev) if sb.want_logprobs else None
    if s == 0:
        return ids, lps
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    x = apply_penalties(logits, sb)
    if x.dtype != torch.float32:
        x = x.float()
    temp = _vec("temperature", sb.temperature, s, torch.float32, dev)
    cfg = tuning.get_config("sample", tuning.bucket(V=v), _default_config(v))
    block, cand = cfg["BLOCK"], cfg["CAND"]
    nch = triton.next_power_of_2(triton.cdiv(v, block))
    lp_arg = lps if lps is not None else ids
    if sb.all_greedy:
        _sample_prep_kernel[(s,)](
            x, temp, temp, temp, temp, x, x, ids, ids, ids, lp_arg, v, x.stride(0),
            ALL_GREEDY=True, WANT_LP=lps is not None, BLOCK=block, NCH=nch, NB=NB_BINS,
            BPN=BINS_PER_NAT, CAND=cand, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return ids, lps
    top_k = _vec("top_k", sb.top_k, s, torch.int32, dev)
    top_p = _vec("top_p", sb.top_p, s, torch.float32, dev)
    min_p = _vec("min_p", sb.min_p, s, torch.float32, dev)
    seeds = _vec("seeds", sb.seeds, s, torch.int64, dev)
    steps = _vec("steps", sb.steps, s, torch.int64, dev)
    stats = torch.empty((s, 2, nch), dtype=torch.float32, device=dev)
    rowf = torch.empty((s, 4), dtype=torch.float32, device=dev)
    rowi = torch.empty((s, 4), dtype=torch.int64, device=dev)
    keys = torch.empty((s, cand), dtype=torch.int64, device=dev)
    _sample_prep_kernel[(s,)](
        x, temp, top_k, top_p, min_p, stats, rowf, rowi, keys, ids, lp_arg, v, x.stride(0),
        ALL_GREEDY=False, WANT_LP=lps is not None, BLOCK=block, NCH=nch, NB=NB_BINS, BPN=BINS_PER_NAT,
        CAND=cand, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    keys = torch.sort(keys, dim=1, descending=True).values
    _sample_draw_kernel[(s,)](
        x, temp, top_k, top_p, min_p, seeds, steps, stats, rowf, rowi, keys, ids, lp_arg,
        v, x.stride(0), WANT_LP=lps is not None, BLOCK=block, NCH=nch, CAND=cand,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return ids, lps


# ---------------------------------------------------------------------------------------------
# argmax: the greedy fast path (no penalties, no logprobs). One row's reduction spread over
# ceil(V / BLOCK) programs, then one program per row merges the partial maxima: torch.argmax
# reduces a [1, 128256] row in one block (~37 us on H100); this takes two short launches.


@triton.jit
def _argmax_part_kernel(x_ptr, pv_ptr, pi_ptr, V, stride_x, NB, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    pdl_launch(PDL)
    pdl_wait(PDL)  # the logits come from the previous kernel
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + row.to(tl.int64) * stride_x + offs, mask=offs < V,
                other=float("-inf")).to(tl.float32)
    v = tl.where(v != v, float("inf"), v)  # NaN counts as the largest value, as in torch.argmax
    m = tl.max(v, axis=0)
    i = tl.min(tl.where(v == m, offs, V), axis=0)  # first index of the maximum
    tl.store(pv_ptr + row * NB + blk, m)
    tl.store(pi_ptr + row * NB + blk, i)


@triton.jit
def _argmax_merge_kernel(pv_ptr, pi_ptr, out_ptr, NB, V, NBP: tl.constexpr, PDL: tl.constexpr):
    pdl_launch(PDL)
    pdl_wait(PDL)  # the partials come from _argmax_part_kernel
    row = tl.program_id(0)
    offs = tl.arange(0, NBP)
    v = tl.load(pv_ptr + row * NB + offs, mask=offs < NB, other=float("-inf"))
    i = tl.load(pi_ptr + row * NB + offs, mask=offs < NB, other=V)
    m = tl.max(v, axis=0)
    best = tl.min(tl.where(v == m, i, V), axis=0)
    tl.store(out_ptr + row, tl.minimum(best, V - 1).to(tl.int64))


ARGMAX_BLOCK = 4096


def argmax(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [S, V] (float32/float16/bfloat16) -> int64 [S]: the first index of each row's
    maximum (NaN counts as the maximum, as in torch.argmax). On the device, no host sync.
    `out`: an int64 tensor of S elements to write (e.g. a captured graph's buffer)."""
    s, v = _check_logits(logits)
    if out is None:
        out = torch.empty(s, dtype=torch.int64, device=logits.device)
    elif (out.dtype != torch.int64 or out.shape != (s,) or out.device != logits.device
          or not out.is_contiguous()):
        raise ValueError(f"out: expected int64 [{s}] on {logits.device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    if s == 0:
        return out
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block = min(ARGMAX_BLOCK, triton.next_power_of_2(v))
    nb = triton.cdiv(v, block)
    pv = torch.empty((s, nb), dtype=torch.float32, device=logits.device)
    pi = torch.empty((s, nb), dtype=torch.int32, device=logits.device)
    pk = pdl.launch_args()  # one decision for both kernels
    _argmax_part_kernel[(s, nb)](logits, pv, pi, v, logits.stride(0), nb, BLOCK=block,
                                 num_warps=4 if block >= 2048 else 1, **pk)
    _argmax_merge_kernel[(s,)](pv, pi, out, nb, v, NBP=triton.next_power_of_2(nb), num_warps=1,
                               **pk)
    return out


# ---------------------------------------------------------------------------------------------
# compile specs (representative: Llama-3 vocab 128256, BLOCK 4096 -> 32 chunks)


def _prep_spec(all_greedy: bool, want_lp: bool, block: int = 4096, nch: int = 32, cand: int = 4096,
               num_warps: int = 16) -> dict:
    sig = {"x_ptr": "*fp32", "temp_ptr": "*fp32", "topk_ptr": "*i32", "topp_ptr": "*fp32",
           "minp_ptr": "*fp32", "stats_ptr": "*fp32", "rowf_ptr": "*fp32", "rowi_ptr": "*i64",
           "keys_ptr": "*i64", "ids_ptr": "*i64", "lp_ptr": "*fp32", "V": "i32", "stride_x": "i64",
           "ALL_GREEDY": "constexpr", "WANT_LP": "constexpr", "BLOCK": "constexpr", "NCH": "constexpr",
           "NB": "constexpr", "BPN": "constexpr", "CAND": "constexpr"}
    return {"name": f"sample_prep_{'greedy' if all_greedy else 'mixed'}_{'lp' if want_lp else 'nolp'}",
            "fn": _sample_prep_kernel, "signature": sig,
            "constexprs": {"ALL_GREEDY": all_greedy, "WANT_LP": want_lp, "BLOCK": block, "NCH": nch,
                           "NB": NB_BINS, "BPN": BINS_PER_NAT, "CAND": cand},
            "num_warps": num_warps, "num_stages": 1, "bucket": tuning.bucket(V=128256)}


def _draw_spec(want_lp: bool, block: int = 4096, nch: int = 32, cand: int = 4096,
               num_warps: int = 16) -> dict:
    sig = {"x_ptr": "*fp32", "temp_ptr": "*fp32", "topk_ptr": "*i32", "topp_ptr": "*fp32",
           "minp_ptr": "*fp32", "seed_ptr": "*i64", "step_ptr": "*i64", "stats_ptr": "*fp32",
           "rowf_ptr": "*fp32", "rowi_ptr": "*i64", "keys_ptr": "*i64", "ids_ptr": "*i64",
           "lp_ptr": "*fp32", "V": "i32", "stride_x": "i64",
           "WANT_LP": "constexpr", "BLOCK": "constexpr", "NCH": "constexpr", "CAND": "constexpr"}
    return {"name": f"sample_draw_{'lp' if want_lp else 'nolp'}", "fn": _sample_draw_kernel,
            "signature": sig,
            "constexprs": {"WANT_LP": want_lp, "BLOCK": block, "NCH": nch, "CAND": cand},
            "num_warps": num_warps, "num_stages": 1, "bucket": tuning.bucket(V=128256)}


COMPILE_SPECS: list[dict] = [
    _prep_spec(True, False),
    _prep_spec(True, True),
    _prep_spec(False, True),
    _draw_spec(False),
    _draw_spec(True),
    {"name": "penalty_count", "fn": _penalty_count_kernel,
     "signature": {"out_ptr": "*i32", "cnt_ptr": "*i32", "Lo": "i32", "V": "i32", "stride_o": "i32",
                   "BLOCK": "constexpr"},
     "constexprs": {"BLOCK": 256}, "num_warps": 4, "num_stages": 1},
    {"name": "penalty_apply", "fn": _penalty_apply_kernel,
     "signature": {"x_ptr": "*fp32", "pen_ptr": "*fp32", "pr_ptr": "*i32", "out_ptr": "*i32",
                   "cnt_ptr": "*i32", "rep_ptr": "*fp32", "pres_ptr": "*fp32", "freq_ptr": "*fp32",
                   "Lp": "i32", "Lo": "i32", "V": "i32", "stride_x": "i32", "stride_p": "i32",
                   "stride_o": "i32", "HAS_OUT": "constexpr", "BLOCK": "constexpr"},
     "constexprs": {"HAS_OUT": True, "BLOCK": 256}, "num_warps": 4, "num_stages": 1},
    {"name": "argmax_part", "fn": _argmax_part_kernel,
     "signature": {"x_ptr": "*fp32", "pv_ptr": "*fp32", "pi_ptr": "*i32", "V": "i32",
                   "stride_x": "i32", "NB": "i32", "BLOCK": "constexpr", "PDL": "constexpr"},
     "constexprs": {"BLOCK": ARGMAX_BLOCK, "PDL": False}, "num_warps": 4, "num_stages": 1},
    {"name": "argmax_merge", "fn": _argmax_merge_kernel,
     "signature": {"pv_ptr": "*fp32", "pi_ptr": "*i32", "out_ptr": "*i64", "NB": "i32", "V": "i32",
                   "NBP": "constexpr", "PDL": "constexpr"},
     "constexprs": {"NBP": 32, "PDL": False}, "num_warps": 1, "num_stages": 1},
]
COMPILE_SPECS += [pdl.with_pdl(s) for s in COMPILE_SPECS[-2:]]   # the argmax as Hopper launches it
