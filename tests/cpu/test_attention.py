"""forge/cpu/attention.py against per-query, per-head loops in float64 over the paged cache."""
from __future__ import annotations

import math

import numpy as np
import pytest

from forge.cpu import attention as attn_mod
from forge.cpu.attention import attention


def reference(q, kc, vc, qsl, lens, tables, heads, kv_heads, scale, window, softcap):
    t = q.shape[0]
    bs, d, dv = kc.shape[1], kc.shape[3], vc.shape[3]
    group = heads // kv_heads
    q = q.reshape(t, heads, d).astype(np.float64)
    out = np.zeros((t, heads, dv))
    for b in range(len(lens)):
        q_len, seq_len = qsl[b + 1] - qsl[b], lens[b]
        for i in range(q_len):
            tok = qsl[b] + i
            p = seq_len - q_len + i
            for h in range(heads):
                kvh = h // group
                scores, values = [], []
                for j in range(seq_len):
                    if j > p or (window is not None and p - j >= window):
                        continue
                    blk, off = tables[b][j // bs], j % bs
                    s = float(np.dot(q[tok, h], kc[blk, off, kvh].astype(np.float64))) * scale
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    scores.append(s)
                    values.append(vc[blk, off, kvh].astype(np.float64))
                m = max(scores)
                w = np.array([math.exp(s - m) for s in scores])
                out[tok, h] = (w[:, None] * np.array(values)).sum(0) / w.sum()
    return out.reshape(t, heads * dv)


def make_case(rng, q_lens, seq_lens, heads=6, kv_heads=2, d=40, dv=24, block_size=16, dtype=np.float32,
              contiguous=False):
    """Random cache (every slot filled, so a wrong read shows) and shuffled block tables
    (or runs of consecutive blocks, which attention reads without a gather)."""
    nblk = [-(-s // block_size) for s in seq_lens]
    width = max(nblk) + 1
    num_blocks = sum(nblk) + 3
    perm = np.arange(1, num_blocks) if contiguous else rng.permutation(np.arange(1, num_blocks))
    tables = np.zeros((len(seq_lens), width), np.int32)
    k = 0
    for b, n in enumerate(nblk):
        tables[b, :n] = perm[k:k + n]
        k += n
    kc = rng.standard_normal((num_blocks, block_size, kv_heads, d)).astype(dtype)
    vc = rng.standard_normal((num_blocks, block_size, kv_heads, dv)).astype(dtype)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(qsl[-1]), heads * d)).astype(np.float32)
    return q, kc, vc, qsl, np.array(seq_lens, np.int32), tables


CASES = {
    "prefill+chunked+decode": ([1, 17, 5], [1, 17, 33]),
    "decode-batch": ([1, 1, 1, 1], [1, 17, 33, 40]),
    "mixed": ([1, 9, 1, 1], [20, 33, 2, 16]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("window,softcap", [(None, None), (4, None), (None, 30.0), (4, 30.0)])
def test_attention_matches_reference(case, window, softcap, rng):
    q_lens, seq_lens = CASES[case]
    q, kc, vc, qsl, lens, tables = make_case(rng, q_lens, seq_lens)
    scale = 1.0 / math.sqrt(40) * (4.0 if softcap else 1.0)   # big logits so the cap bites
    out = attention(q, kc, vc, qsl, lens, tables, 6, 2, scale, window, softcap)
    assert out.dtype == np.float32 and out.shape == (q.shape[0], 6 * 24)
    ref = reference(q, kc, vc, qsl, lens, tables, 6, 2, scale, window, softcap)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


def test_attention_tiles_and_decode_groups(rng, monkeypatch):
    """Force tiny tiles: many query tiles per prefill and several groups of decode sequences."""
    monkeypatch.setattr(attn_mod, "SCORE_BYTES", 6 * 40 * 4 * 3)
    monkeypatch.setattr(attn_mod, "DECODE_BYTES", 2 * 40 * 2 * (40 + 24) * 4)
    for q_lens, seq_lens, window in (([33, 7], [33, 40], None), ([33], [50], 5),
                                     ([1, 1, 1, 1, 1], [3, 40, 17, 5, 33], None),
                                     ([1, 1, 1], [30, 9, 33], 6)):
        q, kc, vc, qsl, lens, tables = make_case(rng, q_lens, seq_lens)
        out = attention(q, kc, vc, qsl, lens, tables, 6, 2, 0.2, window, None)
        ref = reference(q, kc, vc, qsl, lens, tables, 6, 2, 0.2, window, None)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("window", [None, 5])
def test_attention_consecutive_blocks(window, rng, monkeypatch):
    monkeypatch.setattr(attn_mod, "DECODE_BYTES", 1)     # one decode sequence at a time
    for q_lens, seq_lens in (([1], [37]), ([1, 1], [37, 20]), ([7, 1], [40, 3])):
        q, kc, vc, qsl, lens, tables = make_case(rng, q_lens, seq_lens, contiguous=True)
        out = attention(q, kc, vc, qsl, lens, tables, 6, 2, 0.3, window, None)
        ref = reference(q, kc, vc, qsl, lens, tables, 6, 2, 0.3, window, None)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


def test_attention_mha_block_size_1_and_f16_cache(rng):
    q, kc, vc, qsl, lens, tables = make_case(rng, [3, 1], [3, 5], heads=3, kv_heads=3, d=8, dv=8,
                                             block_size=1, dtype=np.float16)
    out = attention(q, kc, vc, qsl, lens, tables, 3, 3, 0.35)
    ref = reference(q, kc, vc, qsl, lens, tables, 3, 3, 0.35, None, None)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


def test_attention_single_key_returns_its_value(rng):
    q, kc, vc, qsl, lens, tables = make_case(rng, [1], [1])
    out = attention(q, kc, vc, qsl, lens, tables, 6, 2, 1.0).reshape(6, 24)
    blk = tables[0, 0]
    for h in range(6):
        np.testing.assert_allclose(out[h], vc[blk, 0, h // 3], rtol=1e-6)


def test_attention_bad_inputs(rng):
    q, kc, vc, qsl, lens, tables = make_case(rng, [2], [3])
    with pytest.raises(ValueError, match="num_heads"):
        attention(q, kc, vc, qsl, lens, tables, 5, 2, 1.0)
    with pytest.raises(ValueError, match="seq_lens"):
        attention(q, kc, vc, qsl, np.array([1], np.int32), tables, 6, 2, 1.0)
    with pytest.raises(ValueError, match="query_start_loc"):
        attention(q, kc, vc, np.array([0, 3], np.int32), lens, tables, 6, 2, 1.0)
    with pytest.raises(ValueError, match="sliding_window"):
        attention(q, kc, vc, qsl, lens, tables, 6, 2, 1.0, sliding_window=0)
    with pytest.raises(ValueError, match="block_tables"):
        attention(q, kc, vc, qsl, np.array([100], np.int32), tables, 6, 2, 1.0)
