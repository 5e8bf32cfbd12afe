"""forge/cpu/embedding.py: gathered rows of the dequantized table, optional scale."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from forge.cpu.dequant import load_qtensor
from forge.cpu.embedding import embed


@pytest.mark.parametrize("qt", [Q.F32, Q.Q8_0, Q.Q4_0, Q.F16], ids=lambda q: q.name)
@pytest.mark.parametrize("policy", ["f32", "raw"])
def test_embed_gathers_rows(qt, policy, rng):
    vocab, dim = 53, 64
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    raw = table if qt == Q.F32 else quants.quantize(table, qt)
    if raw.dtype == np.float16:
        raw = raw.view(np.uint8).reshape(vocab, -1)
    t = load_qtensor(int(qt), (vocab, dim), raw, policy=policy)
    exact = table if qt == Q.F32 else quants.dequantize(raw, qt)
    ids = rng.integers(0, vocab, size=11)
    ids[3] = ids[7]                                    # a repeated id
    ids[0] = vocab - 1
    for scale in (None, 4.75):
        y = embed(t, ids.astype(np.int32), scale)
        assert y.dtype == np.float32 and y.shape == (11, dim)
        ref = exact[ids].astype(np.float64) * (1.0 if scale is None else scale)
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=0)
    y1 = embed(t, np.array([5]))
    np.testing.assert_array_equal(y1[0], exact[5])
    assert embed(t, np.array([], np.int64)).shape == (0, dim)


def test_embed_does_not_alias_the_table(rng):
    table = rng.standard_normal((8, 32)).astype(np.float32)
    t = load_qtensor(int(Q.F32), (8, 32), table.copy(), policy="f32")
    y = embed(t, np.array([2, 2]), scale=3.0)
    y[:] = 0
    np.testing.assert_array_equal(t.data, table)


def test_embed_bad_ids(rng):
    t = load_qtensor(int(Q.F32), (8, 32), np.zeros((8, 32), np.float32), policy="f32")
    with pytest.raises(ValueError, match="ids"):
        embed(t, np.array([8]))
    with pytest.raises(ValueError, match="ids"):
        embed(t, np.array([-1]))
    with pytest.raises(ValueError, match="ids"):
        embed(t, np.array([[1]]))
