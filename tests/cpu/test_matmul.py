"""forge/cpu/matmul.py: linear against a float64 reference, for f32-held and raw-held weights."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from forge.cpu import matmul
from forge.cpu.dequant import load_qtensor
from forge.cpu.matmul import linear


def make_weight(rng, qt: Q, rows: int, cols: int, policy: str):
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.2
    raw = w if qt == Q.F32 else quants.quantize(w, qt)
    t = load_qtensor(int(qt), (rows, cols), raw, policy=policy)
    exact = w.astype(np.float64) if qt == Q.F32 else quants.dequantize(raw, qt).astype(np.float64)
    return t, exact


@pytest.mark.parametrize("qt", [Q.F32, Q.Q8_0, Q.Q4_1, Q.Q5_0], ids=lambda q: q.name)
@pytest.mark.parametrize("policy", ["f32", "raw"])
@pytest.mark.parametrize("tokens", [1, 7])
def test_linear_matches_float64(qt, policy, tokens, rng, monkeypatch):
    monkeypatch.setattr(matmul, "RAW_CHUNK_BYTES", 5 * 96 * 4)   # 5-row chunks: many, last one short
    rows, cols = 37, 96
    t, w64 = make_weight(rng, qt, rows, cols, policy)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    ref = x.astype(np.float64) @ w64.T
    y = linear(x, t)
    assert y.dtype == np.float32 and y.shape == (tokens, rows)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    yb = linear(x, t, bias)
    np.testing.assert_allclose(yb, ref + bias, rtol=1e-5, atol=1e-5)


def test_linear_strided_input_and_out(rng):
    t, w64 = make_weight(rng, Q.Q8_0, 19, 64, "f32")
    big = rng.standard_normal((5, 200)).astype(np.float32)
    x = big[:, 10:74]                                  # a column slice, as model.py passes
    out = np.empty((5, 19), np.float32)
    y = linear(x, t, out=out)
    assert y is out
    np.testing.assert_allclose(y, x.astype(np.float64) @ w64.T, rtol=1e-5, atol=1e-5)


def test_linear_bad_inputs(rng):
    t, _ = make_weight(rng, Q.Q8_0, 4, 32, "raw")
    with pytest.raises(ValueError, match="x"):
        linear(np.zeros((3, 33), np.float32), t)
    with pytest.raises(ValueError, match="x"):
        linear(np.zeros(32, np.float32), t)
    with pytest.raises(ValueError, match="bias"):
        linear(np.zeros((3, 32), np.float32), t, np.zeros(5, np.float32))
