"""sample: penalties, temperature, top-k, top-p, min-p and a seeded draw, vectorised over rows.

The random number of row s depends only on (seeds[s], steps[s]), through `uniform_from_seed`:

    GAMMA = 0x9E3779B97F4A7C15
    mix(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
             z = (z ^ (z >> 27)) * 0x94D049BB133111EB
             return z ^ (z >> 31)                        (all uint64, wrapping)
    key = mix(uint64(seed) + GAMMA)                       (seed as two's-complement uint64)
    r   = mix(key + uint64(step + 1) * GAMMA)
    u   = float64(r >> 11) * 2**-53                       in [0, 1)

i.e. u is the (step+1)-th output of a splitmix64 generator whose state starts at splitmix64's
first output for `seed`. The GPU sampler must compute the same u, bit for bit.

The draw is by inverse CDF: among the kept tokens, in the order they are listed (vocab order, or
descending value, ties by token id, when top-k/top-p needed a sort), pick the first whose
cumulative probability exceeds u * total (see `_draw` for how the running sum is formed). Rows
never influence each other: a row's token depends only on its logits, its parameters and u.
"""
from __future__ import annotations

import numpy as np

from forge.runtime.backend import SamplingBatch

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
TOP_P_CANDIDATES = 1024   # tokens sorted first for top-p without top-k
DRAW_BLOCK = 256          # columns per block of the two-level inverse CDF


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform_from_seed(seeds, steps) -> np.ndarray:
    """float64 [S] in [0, 1): see the module docstring for the exact function."""
    s = np.atleast_1d(np.asarray(seeds, dtype=np.int64)).view(np.uint64)
    t = np.atleast_1d(np.asarray(steps, dtype=np.int64)).view(np.uint64)
    key = _mix(s + GAMMA)
    r = _mix(key + (t + np.uint64(1)) * GAMMA)
    return (r >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _flat_tokens(tokens, s: int, v: int, name: str) -> np.ndarray:
    """tokens [S, L] padded with -1 -> flat indices row * V + token of the valid entries."""
    if tokens is None:
        return np.empty(0, np.int64)
    tok = np.asarray(tokens)
    if tok.size == 0:
        return np.empty(0, np.int64)
    if tok.ndim != 2 or tok.shape[0] != s:
        raise ValueError(f"{name}: expected [{s}, L], got {tuple(tok.shape)}")
    tok = tok.astype(np.int64, copy=False)
    valid = tok >= 0
    if (tok[valid] >= v).any():
        raise ValueError(f"{name}: token id >= vocab size {v}")
    rows = np.broadcast_to(np.arange(s, dtype=np.int64)[:, None], tok.shape)
    return rows[valid] * v + tok[valid]


def _penalties_active(sb: SamplingBatch) -> bool:
    return bool((np.asarray(sb.repetition_penalty) != 1).any() or np.asarray(sb.presence_penalty).any()
                or np.asarray(sb.frequency_penalty).any())


def apply_penalties(x: np.ndarray, sb: SamplingBatch) -> None:
    """In place on x [S, V] f32: repetition (prompt+output tokens), then presence/frequency
    (output tokens): x -= presence * (count > 0) + frequency * count."""
    s, v = x.shape
    rep = np.asarray(sb.repetition_penalty, dtype=np.float32)
    pres = np.asarray(sb.presence_penalty, dtype=np.float32)
    freq = np.asarray(sb.frequency_penalty, dtype=np.float32)
    use_rep, use_pf = bool((rep != 1).any()), bool((pres != 0).any() or (freq != 0).any())
    if not (use_rep or use_pf):
        return
    flat = x.reshape(-1)
    out_idx = _flat_tokens(sb.output_tokens, s, v, "output_tokens")
    if use_rep:
        seen = np.unique(np.concatenate([_flat_tokens(sb.prompt_tokens, s, v, "prompt_tokens"), out_idx]))
        vals = flat[seen]
        r = rep[seen // v]
        flat[seen] = np.where(vals > 0, vals / r, vals * r)
    if use_pf and out_idx.size:
        idx, counts = np.unique(out_idx, return_counts=True)
        row = idx // v
        flat[idx] -= pres[row] + freq[row] * counts.astype(np.float32)


def _draw(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """p [R, N] >= 0 unnormalised (float32), u [R] -> per row the first column whose cumulative
    mass exceeds u * total (inverse CDF), never a column with p = 0.

    Two levels, to avoid a float64 running sum over the whole vocabulary: sums of blocks of
    DRAW_BLOCK columns (float32) with a float64 running sum over blocks pick the block, then a
    float64 running sum inside that block picks the column."""
    r, n = p.shape
    rows = np.arange(r)
    if n <= DRAW_BLOCK:
        cdf = np.cumsum(p, axis=1, dtype=np.float64)
        idx = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
        return np.minimum(idx, np.argmax(cdf >= cdf[:, -1:], axis=1))   # last column with p > 0
    bsum = np.add.reduceat(p, np.arange(0, n, DRAW_BLOCK), axis=1).astype(np.float64)
    bcum = np.cumsum(bsum, axis=1)
    target = u * bcum[:, -1]
    j = np.minimum((bcum <= target[:, None]).sum(axis=1), np.argmax(bcum >= bcum[:, -1:], axis=1))
    rem = target - (bcum[rows, j] - bsum[rows, j])
    cols = j[:, None] * DRAW_BLOCK + np.arange(DRAW_BLOCK)[None, :]
    pb = np.take_along_axis(p, np.minimum(cols, n - 1), axis=1)
    pb[cols >= n] = 0
    cin = np.cumsum(pb, axis=1, dtype=np.float64)
    k = np.minimum((cin <= rem[:, None]).sum(axis=1), np.argmax(cin >= cin[:, -1:], axis=1))
    return j * DRAW_BLOCK + k


def sample(logits: np.ndarray, sb: SamplingBatch) -> tuple[np.ndarray, np.ndarray | None]:
    """logits [S, V] -> (ids int64 [S], logprobs float32 [S] or None)."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected [S, V], got shape {tuple(logits.shape)}")
    s, v = logits.shape
    temp = np.asarray(sb.temperature, dtype=np.float32).reshape(-1)
    if temp.shape != (s,):
        raise ValueError(f"temperature: expected {s} values, got {temp.shape[0]}")
    x = np.asarray(logits, dtype=np.float32)       # never written to: penalties work on a copy
    if _penalties_active(sb):
        x = x.copy()
        apply_penalties(x, sb)
    ids = np.empty(s, np.int64)
    greedy = np.ones(s, bool) if sb.all_greedy else temp <= 0
    g = np.flatnonzero(greedy)
    if g.size:
        ids[g] = np.argmax(x[g], axis=1)
    r = np.flatnonzero(~greedy)
    if r.size:
        z = np.divide(x, temp[:, None]) if r.size == s else x[r] / temp[r][:, None]
        ids[r] = _sample_rows(z, sb, r, v)
    logprobs = None
    if sb.want_logprobs:
        m = x.max(axis=1, keepdims=True)
        e = np.subtract(x, m)
        np.exp(e, out=e)
        lse = np.log(e.sum(axis=1).astype(np.float64)) + m[:, 0]
        logprobs = (x[np.arange(s), ids] - lse).astype(np.float32)
    return ids, logprobs


def _sorted_pick(z: np.ndarray, keff: np.ndarray, top_p: np.ndarray, min_p: np.ndarray,
                 u: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k / top-p / min-p and the draw over the c best tokens of each row, in descending order.

    Rows with keff > c (no top-k, top-p only) are normalised over their whole row; their pick is
    valid only if the nucleus closes within the c candidates: returns (ids, ok)."""
    r, v = z.shape
    if c < v:
        # the top c by value, then in id order so that ties sort by id whatever c is
        cand = np.sort(np.argpartition(z, v - c, axis=1)[:, v - c:], axis=1)
        zc = np.take_along_axis(z, cand, axis=1)
        # argpartition keeps an arbitrary few of the values tied with the c-th largest; the
        # rule is the lowest ids (else a row's pick would depend on c, i.e. on its batch)
        t = zc.min(axis=1)
        split = (z == t[:, None]).sum(axis=1) > (zc == t[:, None]).sum(axis=1)
        if split.any():
            zt, ts = z[split], t[split][:, None]
            above, eq = zt > ts, zt == ts
            room = c - above.sum(axis=1, keepdims=True)        # tied places left, by id
            keep = above | (eq & (np.cumsum(eq, axis=1) <= room))
            cand[split] = np.nonzero(keep)[1].reshape(-1, c)
            zc = np.take_along_axis(z, cand, axis=1)
        order = np.argsort(-zc, axis=1, kind="stable")
        ids_sorted = np.take_along_axis(cand, order, axis=1)
        zs = np.take_along_axis(zc, order, axis=1)
    else:
        ids_sorted = np.argsort(-z, axis=1, kind="stable")
        zs = np.take_along_axis(z, ids_sorted, axis=1)
    p = np.exp(zs - zs[:, :1])
    p[np.arange(c)[None, :] >= keff[:, None]] = 0                          # top-k
    total = p.sum(axis=1, dtype=np.float64)
    trunc = keff > c
    if trunc.any():                                                         # the mass beyond c
        total[trunc] = np.exp(z[trunc] - zs[trunc, :1]).sum(axis=1, dtype=np.float64)
    cum = np.cumsum(p, axis=1, dtype=np.float64)
    ok = ~trunc | (cum[:, -1] >= top_p * total)
    p[(cum - p) >= (top_p * total)[:, None]] = 0                           # top-p
    p[p < min_p[:, None]] = 0                                               # min-p (p[:, 0] = 1)
    return ids_sorted[np.arange(r), _draw(p, u)], ok


def _sample_rows(x: np.ndarray, sb: SamplingBatch, rows: np.ndarray, v: int) -> np.ndarray:
    """Non-greedy rows: x [R, V] penalised logits / temperature (overwritten)."""
    top_k = np.asarray(sb.top_k, dtype=np.int64).reshape(-1)[rows]
    top_p = np.asarray(sb.top_p, dtype=np.float32).reshape(-1)[rows]
    min_p = np.asarray(sb.min_p, dtype=np.float32).reshape(-1)[rows]
    u = uniform_from_seed(np.asarray(sb.seeds).reshape(-1)[rows], np.asarray(sb.steps).reshape(-1)[rows])
    if ((top_p <= 0) | (top_p > 1)).any():
        raise ValueError("top_p: expected values in (0, 1]")
    if ((min_p < 0) | (min_p > 1)).any():
        raise ValueError("min_p: expected values in [0, 1]")
    keff = np.where((top_k > 0) & (top_k < v), top_k, v)
    sort = (keff < v) | (top_p < 1)
    out = np.empty(rows.size, np.int64)

    a = np.flatnonzero(sort)                       # rows needing an order: candidates sorted desc
    if a.size:
        za, ka, pa, ma, ua = x[a], keff[a], top_p[a], min_p[a], u[a]
        # Top-k needs its k best; top-p alone first tries the TOP_P_CANDIDATES best and falls
        # back to a full sort for the rows whose nucleus is wider.
        c = int(np.where(ka < v, ka, min(TOP_P_CANDIDATES, v)).max())
        ids, ok = _sorted_pick(za, ka, pa, ma, ua, c)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            ids[bad] = _sorted_pick(za[bad], ka[bad], pa[bad], ma[bad], ua[bad], v)[0]
        out[a] = ids

    b = np.flatnonzero(~sort)                      # full vocabulary in vocab order
    if b.size:
        zb = x[b]
        zb -= zb.max(axis=1, keepdims=True)
        p = np.exp(zb, out=zb)
        mp = min_p[b]
        if (mp > 0).any():
            p[p < mp[:, None]] = 0                                           # max prob is 1
        out[b] = _draw(p, u[b])
    return out
