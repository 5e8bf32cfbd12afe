"""sample / apply_penalties (Triton) against float64 NumPy references written out here.

Under TRITON_INTERPRET=1 every row costs ~0.1 s, so the interpreter cases use few rows; the
GPU-marked cases run the big vocabularies, batch 32 and the many-draw frequency checks.
"""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import forge.kernels.sampling as smp  # noqa: E402
from forge.runtime.backend import SamplingBatch  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter evaluates both sides of tl.where in NumPy (exp overflow, -inf - -inf): noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# references


def ref_uniform(seed: int, step: int) -> float:
    """splitmix64, as documented in forge/cpu/sampling.py (uint64 wrapping arithmetic)."""
    gamma = 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    key = mix((seed + gamma) & M64)
    r = mix((key + ((step + 1) & M64) * gamma) & M64)
    return (r >> 11) * 2.0 ** -53


def ref_penalize(logits, prompt, output, rep, pres, freq) -> np.ndarray:
    x = logits.astype(np.float64).copy()
    for s in range(x.shape[0]):
        out = [int(t) for t in output[s] if t >= 0]
        hist = {int(t) for t in prompt[s] if t >= 0} | set(out)
        for t in hist:
            x[s, t] = x[s, t] / rep[s] if x[s, t] > 0 else x[s, t] * rep[s]
        for t in set(out):
            x[s, t] -= pres[s] + freq[s] * out.count(t)
    return x


def ref_dist(l: np.ndarray, temp: float, top_k: int, top_p: float, min_p: float):
    """(order, q): the draw order of the vocab and the kept (unnormalised) probability of each
    token in that order; the draw takes the first position whose cumulative q exceeds u * sum."""
    v = l.shape[0]
    z = l.astype(np.float64) / temp
    keff = top_k if 0 < top_k < v else v
    if keff < v or top_p < 1:
        order = np.lexsort((np.arange(v), -z))        # descending z, ties by ascending id
        p = np.exp(z[order] - z[order[0]])
        p[keff:] = 0.0
        pn = p / p.sum()
        keep = np.ones(v, bool)
        if top_p < 1:
            keep &= (np.cumsum(pn) - pn) < top_p
    else:
        order = np.arange(v)
        p = np.exp(z - z.max())
        keep = np.ones(v, bool)
    keep &= p >= min_p
    return order, np.where(keep, p, 0.0)


def check_draw(tok: int, order: np.ndarray, q: np.ndarray, u: float, what: str, rtol: float = 2e-5):
    pos = int(np.flatnonzero(order == tok)[0])
    assert q[pos] > 0, f"{what}: token {tok} is excluded by the filters"
    cdf = np.cumsum(q)
    target = u * cdf[-1]
    tol = rtol * cdf[-1]
    lo, hi = cdf[pos] - q[pos], cdf[pos]
    assert lo - tol <= target < hi + tol, \
        f"{what}: token {tok} at rank {pos} covers [{lo}, {hi}) but u * total = {target}"


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def make_sb(s, *, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, rep=1.0, pres=0.0, freq=0.0, seeds=None,
            steps=None, prompt=None, output=None, all_greedy=False, want_logprobs=False) -> SamplingBatch:
    def vec(v, dtype):
        return torch.as_tensor(np.broadcast_to(np.asarray(v), (s,)).astype(dtype)).to(DEV)

    def toks(t):
        t = np.zeros((s, 0), np.int32) if t is None else np.asarray(t, np.int32)
        return torch.as_tensor(t).to(DEV)

    return SamplingBatch(
        temperature=vec(temp, np.float32), top_k=vec(top_k, np.int32), top_p=vec(top_p, np.float32),
        min_p=vec(min_p, np.float32), repetition_penalty=vec(rep, np.float32),
        presence_penalty=vec(pres, np.float32), frequency_penalty=vec(freq, np.float32),
        seeds=vec(np.arange(s) + 7 if seeds is None else seeds, np.int64),
        steps=vec(0 if steps is None else steps, np.int64),
        prompt_tokens=toks(prompt), output_tokens=toks(output), all_greedy=all_greedy,
        want_logprobs=want_logprobs)


def host(sb: SamplingBatch, name: str) -> np.ndarray:
    return getattr(sb, name).cpu().numpy()


def run_and_check(logits: np.ndarray, sb: SamplingBatch, what: str):
    ids, lps = smp.sample(torch.as_tensor(logits).to(DEV), sb)
    ids = ids.cpu().numpy()
    assert ids.dtype == np.int64 and ids.shape == (logits.shape[0],)
    for s in range(logits.shape[0]):
        t = float(host(sb, "temperature")[s])
        if t <= 0 or sb.all_greedy:
            assert ids[s] == int(np.argmax(logits[s])), f"{what}: greedy row {s}"
            continue
        order, q = ref_dist(logits[s], t, int(host(sb, "top_k")[s]), float(host(sb, "top_p")[s]),
                            float(host(sb, "min_p")[s]))
        u = ref_uniform(int(host(sb, "seeds")[s]), int(host(sb, "steps")[s]))
        check_draw(int(ids[s]), order, q, u, f"{what} row {s}")
    if sb.want_logprobs:
        want = log_softmax(logits.astype(np.float64))[np.arange(len(ids)), ids]
        np.testing.assert_allclose(lps.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
    else:
        assert lps is None
    return ids


@pytest.fixture
def small_cand(monkeypatch):
    """Tiny candidate buffer and chunks, so the interpreter walks several chunks and the
    bisection fallback can be forced."""
    def set_cfg(block=128, cand=16):
        monkeypatch.setattr(smp, "_default_config",
                            lambda v: {"BLOCK": min(block, 1 << (v - 1).bit_length()), "CAND": cand,
                                       "num_warps": 4, "num_stages": 1})
    return set_cfg


# ---------------------------------------------------------------------------------------------
# cases


def test_uniform_matches_reference_hash():
    """The kernel's u equals splitmix64(seed, step): checked through a 2-token draw whose
    boundary sits at probability 1/2 (token 1 iff u >= 1/2), over awkward seeds and steps."""
    seeds = np.array([0, 1, -1, 123456789, -(1 << 63), (1 << 63) - 1, 42, 99], np.int64)
    steps = np.array([0, 5, 7, 1 << 40, 3, 2, 1000, 0], np.int64)
    logits = np.zeros((len(seeds), 2), np.float32)
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(len(seeds), seeds=seeds, steps=steps))
    want = [int(ref_uniform(int(a) & M64, int(b)) >= 0.5) for a, b in zip(seeds, steps)]
    assert ids.cpu().tolist() == want


def test_greedy_is_argmax_with_logprobs(rng):
    s, v = 3, 1000
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    run_and_check(logits, make_sb(s, temp=0.0, want_logprobs=True), "greedy")
    run_and_check(logits, make_sb(s, all_greedy=True, want_logprobs=True), "all_greedy")
    run_and_check(logits, make_sb(s, all_greedy=True), "all_greedy no logprobs")


def test_top_k_1_is_argmax(rng):
    s, v = 2, 777
    logits = (rng.standard_normal((s, v)) * 2).astype(np.float32)
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(s, temp=1.3, top_k=1))
    assert ids.cpu().tolist() == np.argmax(logits, axis=1).tolist()


def test_mixed_batch_matches_reference(rng):
    """Every path on the fast (candidate) route: plain, min-p, top-k, top-p, combinations,
    tiny temperature, masked (-inf) logits, greedy rows in the same batch."""
    temp = [0.0, 1.0, 0.7, 1.2, 1.0, 1.0, 0.05, 2.5, 1.5, 0.9]
    top_k = [0, 0, 20, 0, 5, 0, 0, 50, 0, 30]
    top_p = [1.0, 1.0, 1.0, 0.9, 0.8, 1.0, 0.5, 0.95, 0.999, 0.6]
    min_p = [0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.01, 0.001, 0.1]
    s, v = len(temp), 1000
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    logits[3, ::3] = -np.inf
    logits[5, 1::2] = -np.inf
    sb = make_sb(s, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                 seeds=rng.integers(-(1 << 62), 1 << 62, s), steps=rng.integers(0, 1000, s),
                 want_logprobs=True)
    ids = run_and_check(logits, sb, "mixed")
    assert np.isfinite(logits[np.arange(s), ids]).all()


def test_multi_chunk_and_fallback(rng, small_cand):
    """Several chunks per row, and kept sets larger than the candidate buffer (the bisection
    fallback): top-k 40 > 16 candidates, a flat distribution under top-p, min-p alone."""
    small_cand(block=128, cand=16)
    temp = [1.0, 1.0, 2.0, 0.8, 1.0, 3.0]
    top_k = [40, 0, 0, 25, 0, 0]
    top_p = [1.0, 0.95, 0.9, 0.7, 1.0, 0.99]
    min_p = [0.0, 0.0, 0.0, 0.02, 0.2, 0.0]
    s, v = len(temp), 700
    logits = (rng.standard_normal((s, v)) * 2).astype(np.float32)
    sb = make_sb(s, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                 seeds=rng.integers(0, 1 << 40, s), steps=rng.integers(0, 50, s), want_logprobs=True)
    run_and_check(logits, sb, "fallback")


def test_degenerate_top_p_zero_gives_argmax(rng, small_cand):
    """top_p <= 0 (rejected by SamplingParams; not checkable on the device) keeps the top token,
    on the candidate path and on the bisection fallback (top-k 40 > 16 candidates)."""
    small_cand(block=128, cand=16)
    s, v = 2, 300
    logits = (rng.standard_normal((s, v)) * 2).astype(np.float32)
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(s, top_k=[0, 40], top_p=0.0))
    assert ids.cpu().tolist() == np.argmax(logits, axis=1).tolist()


def test_fast_path_with_small_buffer_still_exact(rng, small_cand):
    """Candidates that fit a 64-entry buffer over 6 chunks of 128."""
    small_cand(block=128, cand=64)
    s, v = 4, 700
    logits = (rng.standard_normal((s, v)) * 4).astype(np.float32)
    sb = make_sb(s, temp=[1.0, 0.6, 1.0, 1.0], top_k=[10, 0, 0, 3], top_p=[1.0, 0.9, 0.5, 0.2],
                 seeds=rng.integers(0, 1 << 40, s))
    run_and_check(logits, sb, "small buffer")


def test_same_seed_step_same_ids_independent_of_batch_position(rng):
    s, v = 4, 500
    logits = (rng.standard_normal((s, v)) * 1.5).astype(np.float32)
    seeds, steps = rng.integers(0, 1 << 50, s), rng.integers(0, 1 << 20, s)
    kw = dict(temp=1.0, top_k=[0, 40, 0, 0], top_p=[1.0, 1.0, 0.9, 1.0], min_p=[0, 0, 0, 0.05])
    a, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(s, seeds=seeds, steps=steps, **kw))
    perm = np.array([2, 0, 3, 1])
    kwp = {k: (np.asarray(val)[perm] if np.ndim(val) else val) for k, val in kw.items()}
    b, _ = smp.sample(torch.as_tensor(logits[perm]).to(DEV),
                      make_sb(s, seeds=seeds[perm], steps=steps[perm], **kwp))
    assert b.cpu().numpy().tolist() == a.cpu().numpy()[perm].tolist()
    c, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(s, seeds=seeds, steps=steps + 1, **kw))
    d, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(s, seeds=seeds, steps=steps + 1, **kw))
    assert c.cpu().tolist() == d.cpu().tolist()


def test_top_k_boundary_ties_keep_the_lowest_id(rng):
    """Four tokens tied at the top-2 boundary: the lowest of their ids is the one kept, on the
    device as in forge/cpu (where a row's pick once depended on its batch for this reason).
    32 draws: each is the top token or that id; both appear (the tied one has p = 0.38, so it
    is missing from all 32 with probability 2e-7)."""
    v, n = 97, 32
    row = np.full(v, -20.0, np.float32)
    ids = rng.permutation(v)
    top, tied = int(ids[0]), np.sort(ids[1:5])
    row[top], row[tied] = 1.0, 0.5
    sb = make_sb(n, temp=1.0, top_k=2, seeds=rng.integers(0, 1 << 50, n), steps=np.arange(n))
    got, _ = smp.sample(torch.as_tensor(np.repeat(row[None], n, axis=0)).to(DEV), sb)
    assert set(got.cpu().tolist()) == {top, int(tied[0])}


def test_filters_never_pick_excluded_tokens(rng):
    """12 draws from one row under top-p + min-p: each lands in the reference kept set."""
    v, n = 300, 12
    row = (rng.standard_normal(v) * 2).astype(np.float32)
    logits = np.repeat(row[None], n, axis=0)
    sb = make_sb(n, temp=1.0, top_p=0.7, min_p=0.1, seeds=np.arange(n) * 1000 + 5)
    order, q = ref_dist(row, 1.0, 0, 0.7, 0.1)
    allowed = set(order[q > 0].tolist())
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), sb)
    assert set(ids.cpu().tolist()) <= allowed
    run_and_check(logits, sb, "filters")


def test_empirical_frequencies_small(rng):
    """48 draws over 4 tokens (p = .4 .3 .2 .1): counts within 4.5 binomial sigmas. The exact
    per-draw checks above carry the precise claim; the GPU test draws 20000."""
    p = np.array([0.4, 0.3, 0.2, 0.1])
    n = 48
    logits = np.repeat(np.log(p)[None].astype(np.float32), n, axis=0)
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), make_sb(n, seeds=rng.integers(0, 1 << 60, n)))
    counts = np.bincount(ids.cpu().numpy(), minlength=4)
    sigma = np.sqrt(n * p * (1 - p))
    assert (np.abs(counts - n * p) <= 4.5 * sigma).all(), counts


def test_penalties_match_reference(rng):
    s, v, lp, lo = 3, 400, 9, 7
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    prompt = rng.integers(0, v, (s, lp)).astype(np.int32)
    output = rng.integers(0, 20, (s, lo)).astype(np.int32)   # repeats, so counts > 1
    prompt[0, 5:] = -1
    output[1, 3:] = -1
    output[2, :] = -1
    rep, pres, freq = [1.3, 1.0, 2.0], [0.5, 0.25, 1.0], [0.2, 0.75, 0.0]
    sb = make_sb(s, temp=0.0, rep=rep, pres=pres, freq=freq, prompt=prompt, output=output,
                 want_logprobs=True)
    pen = smp.apply_penalties(torch.as_tensor(logits).to(DEV), sb).cpu().numpy()
    want = ref_penalize(logits, prompt, output, np.float32(rep), np.float32(pres), np.float32(freq))
    np.testing.assert_allclose(pen, want, rtol=1e-6, atol=1e-6)
    # greedy and logprobs act on the penalised logits
    ids, lps = smp.sample(torch.as_tensor(logits).to(DEV), sb)
    assert ids.cpu().tolist() == np.argmax(want, axis=1).tolist()
    np.testing.assert_allclose(lps.cpu().numpy(), log_softmax(want)[np.arange(s), ids.cpu().numpy()],
                               rtol=1e-5, atol=1e-5)


def test_penalties_prompt_only_and_output_only(rng):
    s, v = 2, 64
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    prompt = rng.integers(0, v, (s, 5)).astype(np.int32)
    output = rng.integers(0, v, (s, 6)).astype(np.int32)
    for pr, out in ((prompt, None), (None, output)):
        sb = make_sb(s, rep=1.5, pres=0.3, freq=0.4, prompt=pr, output=out)
        pen = smp.apply_penalties(torch.as_tensor(logits).to(DEV), sb).cpu().numpy()
        e = np.full((s, 0), -1)
        want = ref_penalize(logits, e if pr is None else pr, e if out is None else out,
                            np.full(s, 1.5), np.full(s, 0.3, np.float32), np.full(s, 0.4, np.float32))
        np.testing.assert_allclose(pen, want, rtol=1e-6, atol=1e-6)
    # no history at all: the logits pass through untouched (no copy)
    x = torch.as_tensor(logits).to(DEV)
    assert smp.apply_penalties(x, make_sb(s, rep=1.5)) is x


def test_vocab_262144_one_row(rng):
    v = 262144
    logits = (rng.standard_normal((1, v)) * 2.5).astype(np.float32)
    sb = make_sb(1, temp=0.8, top_p=0.9, seeds=rng.integers(0, 1 << 40, 1), want_logprobs=True)
    run_and_check(logits, sb, "vocab 262144")


def test_bad_inputs():
    x = torch.zeros(2, 8, device=DEV)
    with pytest.raises(ValueError, match="logits"):
        smp.sample(torch.zeros(8, device=DEV), make_sb(2))
    with pytest.raises(ValueError, match="temperature"):
        smp.sample(x, make_sb(3))
    with pytest.raises(ValueError, match="prompt_tokens"):
        sb = make_sb(2, prompt=np.zeros((3, 4), np.int32))
        smp.sample(x, sb)
    with pytest.raises(ValueError, match="logits"):
        smp.sample(torch.zeros(2, 8, dtype=torch.int32, device=DEV), make_sb(2))


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("v", [128256, 262144])
def test_batch32_big_vocab_gpu(rng, v):
    s = 32
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    temp = rng.choice([0.0, 0.7, 1.0, 1.5], s)
    top_k = rng.choice([0, 1, 40, 1000, 5000], s)       # 5000 > CAND: the fallback
    top_p = rng.choice([1.0, 0.9, 0.95, 0.5], s)
    min_p = rng.choice([0.0, 0.0, 0.05], s)
    sb = make_sb(s, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                 seeds=rng.integers(0, 1 << 62, s), steps=rng.integers(0, 1 << 20, s),
                 want_logprobs=True)
    run_and_check(logits, sb, f"batch32 v{v}")


@pytest.mark.gpu
def test_no_host_sync_gpu(rng):
    s, v = 8, 128256
    logits = torch.as_tensor((rng.standard_normal((s, v)) * 3).astype(np.float32)).to(DEV)
    sb = make_sb(s, temp=[0.0, 1.0, 0.8, 1.0, 1.0, 1.2, 1.0, 0.5], top_k=[0, 0, 50, 0, 5000, 0, 1, 0],
                 top_p=[1, 1, 1, 0.9, 1, 0.95, 1, 1], min_p=[0, 0.05, 0, 0, 0, 0, 0, 0],
                 rep=1.2, pres=0.5, freq=0.3, prompt=rng.integers(0, v, (s, 33)),
                 output=rng.integers(0, v, (s, 17)), want_logprobs=True)
    smp.sample(logits, sb)  # warm up (compiles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ids, lps = smp.sample(logits, sb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ids.shape == (s,) and lps.shape == (s,)


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [dict(), dict(top_k=3), dict(top_p=0.8), dict(min_p=0.3), dict(temp=0.5)])
def test_empirical_frequencies_gpu(rng, kw):
    n, v = 20000, 6
    row = np.log(np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])).astype(np.float32)
    logits = np.repeat(row[None], n, axis=0)
    sb = make_sb(n, seeds=rng.integers(0, 1 << 62, n), steps=rng.integers(0, 1 << 30, n), **kw)
    ids, _ = smp.sample(torch.as_tensor(logits).to(DEV), sb)
    counts = np.bincount(ids.cpu().numpy(), minlength=v)
    order, q = ref_dist(row, kw.get("temp", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0))
    p = np.zeros(v)
    p[order] = q / q.sum()
    assert counts[p == 0].sum() == 0
    sigma = np.sqrt(n * p * (1 - p)) + 1e-9
    assert (np.abs(counts - n * p) <= 4.5 * sigma).all(), (counts, n * p)


@pytest.mark.parametrize("s,v", [(1, 1), (1, 7), (3, 4097), (2, 12289), (1, 128256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_matches_numpy(rng, s, v, dtype):
    x = torch.from_numpy(rng.standard_normal((s, v)).astype(np.float32)).to(DEV).to(dtype)
    # plant ties: the maximum repeated later in the row (the first index must win), and in
    # a row of several blocks a tie that crosses a block boundary
    for r in range(s):
        j = int(rng.integers(0, v))
        x[r, j] = 9.0
        x[r, v - 1] = 9.0
        if v > 4096:
            x[r, 4096] = 9.0
    want = np.argmax(x.float().cpu().numpy().astype(np.float64), axis=1)
    got = smp.argmax(x).cpu().numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    buf = torch.full((s + 3,), -7, dtype=torch.int64, device=DEV)  # into a caller's buffer
    assert smp.argmax(x, out=buf[:s]).data_ptr() == buf.data_ptr()
    np.testing.assert_array_equal(buf[:s].cpu().numpy(), want)
    assert buf[s:].tolist() == [-7] * 3


def test_argmax_all_neg_inf_and_nan(rng):
    x = torch.full((2, 5000), float("-inf"), device=DEV)
    x[1, 4500] = float("nan")
    x[1, 10] = 3.0
    assert smp.argmax(x).tolist() == [0, 4500]
    with pytest.raises(ValueError, match="logits"):
        smp.argmax(torch.zeros(3, device=DEV))
    with pytest.raises(ValueError, match="logits"):
        smp.argmax(torch.zeros((1, 4), dtype=torch.int32, device=DEV))
    assert smp.argmax(torch.zeros((0, 4), device=DEV)).shape == (0,)
    with pytest.raises(ValueError, match="out"):
        smp.argmax(x, out=torch.zeros(2, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match="out"):
        smp.argmax(x, out=torch.zeros(3, dtype=torch.int64, device=DEV))
