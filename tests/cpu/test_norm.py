"""forge/cpu/norm.py: rms_norm (plain and fused with the residual add) against float64."""
from __future__ import annotations

import numpy as np
import pytest

from forge.cpu.norm import rms_norm


def reference(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty(x.shape, np.float64)
    for i in range(x.shape[0]):
        row = x[i].astype(np.float64)
        out[i] = row / np.sqrt(np.mean(row * row) + eps) * w.astype(np.float64)
    return out


@pytest.mark.parametrize("shape", [(7, 67), (1, 576), (3, 1)])
def test_rms_norm(shape, rng):
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 50)).astype(np.float32)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    eps = float(rng.choice([1e-5, 1e-6]))
    y = rms_norm(x, w, eps)
    assert y.dtype == np.float32 and y.shape == shape
    np.testing.assert_allclose(y, reference(x, w, eps), rtol=2e-6, atol=1e-6)


def test_rms_norm_eps_dominates_tiny_rows():
    x = np.zeros((2, 16), np.float32)
    x[1] = 1e-4
    y = rms_norm(x, np.ones(16, np.float32), 1e-2)
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_allclose(y[1], 1e-4 / np.sqrt(1e-8 + 1e-2), rtol=1e-6)


def test_rms_norm_residual(rng):
    x = rng.standard_normal((7, 67)).astype(np.float32)
    r = rng.standard_normal((7, 67)).astype(np.float32)
    w = rng.standard_normal(67).astype(np.float32)
    y, h = rms_norm(x, w, 1e-6, residual=r)
    np.testing.assert_array_equal(h, x + r)            # the float32 sum, exactly
    assert h.dtype == np.float32
    np.testing.assert_allclose(y, reference(x.astype(np.float64) + r, w, 1e-6), rtol=2e-6, atol=1e-6)
    x0, r0 = x.copy(), r.copy()
    rms_norm(x, w, 1e-6, residual=r)
    np.testing.assert_array_equal(x, x0)               # inputs untouched
    np.testing.assert_array_equal(r, r0)


def test_rms_norm_per_head_view(rng):
    qkv = rng.standard_normal((5, 3 * 40)).astype(np.float32)
    q = qkv[:, :80].reshape(10, 40)                    # QK-norm on a [T*H, Dh] view
    w = rng.standard_normal(40).astype(np.float32)
    np.testing.assert_allclose(rms_norm(q, w, 1e-6), reference(q, w, 1e-6), rtol=2e-6, atol=1e-6)


def test_rms_norm_bad_shapes(rng):
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, np.ones(7, np.float32), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, np.ones(8, np.float32), 1e-6, residual=np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="x"):
        rms_norm(np.zeros(8, np.float32), np.ones(8, np.float32), 1e-6)
