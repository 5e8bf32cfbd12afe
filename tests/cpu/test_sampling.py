"""forge/cpu/sampling.py: the seeded uniform, penalties, filters and the draw."""
from __future__ import annotations

import numpy as np
import pytest

from forge.cpu import sampling
from forge.cpu.sampling import apply_penalties, sample, uniform_from_seed
from forge.runtime.backend import SamplingBatch

MASK = (1 << 64) - 1


def ref_uniform(seed: int, step: int) -> float:
    """The documented splitmix64 construction, in Python integers."""
    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    gamma = 0x9E3779B97F4A7C15
    key = mix((seed + gamma) & MASK)
    r = mix((key + (step + 1) * gamma) & MASK)
    return (r >> 11) * 2.0 ** -53


def batch(s, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, rep=1.0, pres=0.0, freq=0.0,
          seeds=None, steps=None, prompt=None, output=None, logprobs=False, all_greedy=False):
    full = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (s,)).copy()
    return SamplingBatch(
        temperature=full(temperature, np.float32), top_k=full(top_k, np.int32),
        top_p=full(top_p, np.float32), min_p=full(min_p, np.float32),
        repetition_penalty=full(rep, np.float32), presence_penalty=full(pres, np.float32),
        frequency_penalty=full(freq, np.float32),
        seeds=full(0 if seeds is None else seeds, np.int64),
        steps=full(0 if steps is None else steps, np.int64),
        prompt_tokens=np.full((s, 0), -1, np.int32) if prompt is None else prompt,
        output_tokens=np.full((s, 0), -1, np.int32) if output is None else output,
        all_greedy=all_greedy, want_logprobs=logprobs)


def softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_uniform_is_the_documented_function(rng):
    seeds = np.concatenate([rng.integers(-2**63, 2**63 - 1, size=20), [0, -1, 2**63 - 1]])
    steps = np.concatenate([rng.integers(0, 2**40, size=20), [0, 7, 2**62]])
    u = uniform_from_seed(seeds, steps)
    assert u.dtype == np.float64
    assert ((u >= 0) & (u < 1)).all()
    expect = [ref_uniform(int(s) & MASK, int(t)) for s, t in zip(seeds, steps)]
    np.testing.assert_array_equal(u, expect)


def test_uniform_spreads(rng):
    u = uniform_from_seed(np.full(20000, 1234), np.arange(20000))
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.abs(hist - 2000).max() < 200
    assert len(set(uniform_from_seed(np.arange(1000), np.zeros(1000)))) == 1000


def test_greedy_and_top_k_1_are_argmax(rng):
    logits = rng.standard_normal((9, 101)).astype(np.float32) * 3
    expect = np.argmax(logits, axis=1)
    for sb in (batch(9, temperature=0.0), batch(9, temperature=0.7, all_greedy=True),
               batch(9, temperature=1.3, top_k=1, seeds=rng.integers(0, 1000, 9))):
        ids, lp = sample(logits, sb)
        assert ids.dtype == np.int64 and lp is None
        np.testing.assert_array_equal(ids, expect)


def test_determinism_and_seed_dependence(rng):
    logits = np.zeros((64, 1000), np.float32)           # uniform: every token equally likely
    seeds = rng.integers(0, 2**62, size=64)
    a, _ = sample(logits, batch(64, seeds=seeds, steps=5))
    b, _ = sample(logits, batch(64, seeds=seeds, steps=5))
    np.testing.assert_array_equal(a, b)
    c, _ = sample(logits, batch(64, seeds=seeds + 1, steps=5))
    d, _ = sample(logits, batch(64, seeds=seeds, steps=6))
    assert (a != c).sum() > 50 and (a != d).sum() > 50


def test_row_result_depends_only_on_its_own_row(rng):
    logits = rng.standard_normal((6, 300)).astype(np.float32)
    sb = batch(6, temperature=[0.0, 0.8, 1.0, 1.2, 0.9, 1.0], top_k=[0, 0, 20, 5, 0, 50],
               top_p=[1.0, 1.0, 1.0, 0.9, 0.8, 1.0], min_p=[0, 0.05, 0, 0, 0, 0.1],
               seeds=rng.integers(0, 2**40, 6), steps=rng.integers(0, 100, 6))
    ids, _ = sample(logits, sb)
    for i in range(6):
        one = SamplingBatch(*[getattr(sb, f)[i:i + 1] for f in ("temperature", "top_k", "top_p", "min_p",
                              "repetition_penalty", "presence_penalty", "frequency_penalty", "seeds",
                              "steps", "prompt_tokens", "output_tokens")])
        assert sample(logits[i:i + 1], one)[0][0] == ids[i]


def test_top_k_boundary_ties_keep_the_lowest_ids(rng):
    """Tokens tied with the k-th largest value: the lowest ids are kept, whatever the number of
    candidates sorted (a row alone sorts k of them, in a batch with a larger top-k more): a row's
    pick must not depend on its batch (seed 4252383077 of the test above drew token 245 alone and
    126 in its batch, two tokens with the same float32 logit at the top-5 boundary)."""
    v, k = 97, 6
    for _ in range(20):
        z = rng.standard_normal(v).astype(np.float32)
        top = np.argsort(-z, kind="stable")
        # the k-th largest value given to 4 more tokens, at random places (some below its id)
        tied = rng.choice(top[k:], 4, replace=False)
        z[tied] = z[top[k - 1]]
        group = np.sort(np.append(tied, top[k - 1]))
        want_kept = set(top[:k - 1]) | {group[0]}
        u = np.linspace(0, 1, 41, endpoint=False)
        rows = np.repeat(z[None, :], u.size, axis=0)
        picks = {}
        for c in (k, k + 2, k + 4, 40, v):
            ids, ok = sampling._sorted_pick(rows.copy(), np.full(u.size, k),
                                            np.ones(u.size, np.float32),
                                            np.zeros(u.size, np.float32), u, c)
            assert ok.all()
            assert set(ids) == want_kept, (c, sorted(set(ids)), sorted(want_kept))
            picks[c] = ids
        for c in picks:
            np.testing.assert_array_equal(picks[c], picks[v])
        # and through sample(): alone, and in a batch whose other row sorts 50 candidates
        sb = batch(2, temperature=1.0, top_k=[k, 50], seeds=[11, 12], steps=[3, 4])
        both = sample(np.stack([z, z]), sb)[0]
        alone = sample(z[None, :], batch(1, temperature=1.0, top_k=k, seeds=11, steps=3))[0]
        assert both[0] == alone[0] and both[0] in want_kept


def chi2(counts, probs):
    n = counts.sum()
    expected = probs * n
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with probability 0 was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


def draw_many(logits_row, n, **kw):
    logits = np.broadcast_to(logits_row, (n, logits_row.size)).astype(np.float32)
    ids, _ = sample(logits, batch(n, seeds=kw.pop("seed", 99), steps=np.arange(n), **kw))
    return np.bincount(ids, minlength=logits_row.size)


def test_distribution_matches_softmax(rng):
    logits = rng.standard_normal(6).astype(np.float32)
    for temperature in (0.7, 1.5):
        counts = draw_many(logits, 20000, temperature=temperature, seed=int(rng.integers(0, 2**31)))
        stat, df = chi2(counts, softmax64(logits.astype(np.float64) / np.float32(temperature)))
        assert stat < 35, (stat, df)                 # chi2(5) > 35 has p ~ 1e-6


def test_top_k_distribution(rng):
    logits = rng.standard_normal(8).astype(np.float32)
    counts = draw_many(logits, 20000, top_k=3, seed=int(rng.integers(0, 2**31)))
    top = np.argsort(-logits)[:3]
    probs = np.zeros(8)
    probs[top] = softmax64(logits[top])
    stat, df = chi2(counts, probs)
    assert stat < 30, (stat, df)


def test_distribution_over_a_large_vocab(rng):
    """V = 700 > DRAW_BLOCK: the two-level draw, with mass at block edges and in the ragged tail."""
    v = 700
    logits = np.full(v, -4.0, np.float32) + rng.uniform(-0.5, 0.5, v).astype(np.float32)
    hot = [0, 255, 256, 511, 512, 699]
    logits[hot] = rng.uniform(0.0, 2.0, len(hot))
    counts = draw_many(logits, 8000, seed=int(rng.integers(0, 2**31)))
    p = softmax64(logits)
    rest = np.setdiff1d(np.arange(v), hot)
    binned_counts = np.append(counts[hot], counts[rest].sum())
    binned_p = np.append(p[hot], p[rest].sum())
    stat, df = chi2(binned_counts, binned_p)
    assert stat < 35, (stat, df)                     # chi2(6) > 35 has p ~ 4e-6


def nucleus(probs, top_p):
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before < top_p].tolist())


@pytest.mark.parametrize("candidates", [1024, 3])
def test_top_p_and_min_p_never_pick_excluded(candidates, rng, monkeypatch):
    """candidates=3: top-p first looks at 3 tokens, so wide nuclei take the full-sort fallback."""
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", candidates)
    logits = (rng.standard_normal(40) * 2).astype(np.float32)
    p = softmax64(logits)
    for top_p in (0.3, 0.75, 0.95):
        counts = draw_many(logits, 4000, top_p=top_p, seed=int(rng.integers(0, 2**31)))
        allowed = nucleus(p, top_p)
        assert set(np.flatnonzero(counts).tolist()) <= allowed
        kept = np.zeros(40)
        kept[list(allowed)] = p[list(allowed)]
        assert chi2(counts, kept / kept.sum())[0] < 70
    for min_p in (0.05, 0.3):
        counts = draw_many(logits, 4000, min_p=min_p, seed=int(rng.integers(0, 2**31)))
        allowed = set(np.flatnonzero(p >= min_p * p.max()).tolist())
        assert set(np.flatnonzero(counts).tolist()) <= allowed
        assert max(allowed, key=lambda i: p[i]) in set(np.flatnonzero(counts).tolist())
    # all three at once: top-k then top-p over the survivors, then min-p
    counts = draw_many(logits, 4000, top_k=10, top_p=0.8, min_p=0.1, temperature=0.9, seed=3)
    z = logits.astype(np.float64) / np.float32(0.9)
    top = np.argsort(-z)[:10]
    pk = np.zeros(40)
    pk[top] = softmax64(z[top])
    allowed = nucleus(pk, 0.8) & set(np.flatnonzero(pk >= 0.1 * pk.max()).tolist())
    assert set(np.flatnonzero(counts).tolist()) <= allowed


def reference_penalties(logits, prompt, output, rep, pres, freq):
    x = logits.astype(np.float64).copy()
    for r in range(x.shape[0]):
        seen = {int(t) for t in prompt[r] if t >= 0} | {int(t) for t in output[r] if t >= 0}
        for t in seen:
            x[r, t] = x[r, t] / rep[r] if x[r, t] > 0 else x[r, t] * rep[r]
        counts = {}
        for t in output[r]:
            if t >= 0:
                counts[int(t)] = counts.get(int(t), 0) + 1
        for t, c in counts.items():
            x[r, t] -= pres[r] + freq[r] * c
    return x


def test_penalties_match_reference(rng):
    s, v = 5, 50
    logits = (rng.standard_normal((s, v)) * 3).astype(np.float32)
    prompt = rng.integers(0, v, size=(s, 12)).astype(np.int32)
    output = rng.integers(0, v, size=(s, 9)).astype(np.int32)
    output[:, 0] = output[:, 1]                          # repeated output tokens
    prompt[:, -3:] = -1                                  # padding
    output[1, 4:] = -1
    rep = np.array([1.0, 1.3, 0.8, 2.0, 1.1], np.float32)
    pres = np.array([0.0, 0.5, -0.4, 1.0, 0.0], np.float32)
    freq = np.array([0.0, 0.25, 0.0, -0.5, 0.7], np.float32)
    sb = batch(s, rep=rep, pres=pres, freq=freq, prompt=prompt, output=output, logprobs=True,
               temperature=0.0)
    logits_before = logits.copy()
    x = logits.copy()
    apply_penalties(x, sb)
    ref = reference_penalties(logits, prompt, output, rep, pres, freq)
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6)
    ids, lp = sample(logits, sb)
    np.testing.assert_array_equal(ids, np.argmax(ref, axis=1))
    lsm = np.log(softmax64(ref))
    np.testing.assert_allclose(lp, lsm[np.arange(s), ids], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits, logits_before)  # the caller's logits are untouched
    unchanged = logits.copy()
    apply_penalties(unchanged, batch(s, prompt=prompt, output=output))
    np.testing.assert_array_equal(unchanged, logits)      # neutral settings change nothing


def test_logprobs_are_before_temperature(rng):
    logits = rng.standard_normal((4, 30)).astype(np.float32)
    ids, lp = sample(logits, batch(4, temperature=[0.0, 0.5, 2.0, 1.0], top_k=[0, 5, 0, 3],
                                   seeds=[1, 2, 3, 4], logprobs=True))
    lsm = np.log(softmax64(logits))
    assert lp.dtype == np.float32
    np.testing.assert_allclose(lp, lsm[np.arange(4), ids], rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    logits = np.zeros((2, 10), np.float32)
    with pytest.raises(ValueError, match="temperature"):
        sample(logits, batch(3))
    with pytest.raises(ValueError, match="top_p"):
        sample(logits, batch(2, top_p=0.0))
    with pytest.raises(ValueError, match="output_tokens"):
        sample(logits, batch(2, pres=1.0, output=np.array([[10], [0]], np.int32)))
    with pytest.raises(ValueError, match="logits"):
        sample(np.zeros(10, np.float32), batch(1))
