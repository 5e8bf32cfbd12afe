"""forge/cpu/activation.py: gated SiLU and GELU-tanh against float64 formulas."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from forge.cpu.activation import act_mul


def ref_silu(g):
    return np.array([v / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in g.ravel()]).reshape(g.shape)


def ref_gelu_tanh(g):
    c = math.sqrt(2.0 / math.pi)
    return np.array([0.5 * v * (1.0 + math.tanh(c * (v + 0.044715 * v ** 3))) for v in g.ravel()]).reshape(g.shape)


@pytest.mark.parametrize("kind,ref", [("silu", ref_silu), ("gelu_tanh", ref_gelu_tanh)])
def test_act_mul(kind, ref, rng):
    gate = (rng.standard_normal((7, 45)) * 4).astype(np.float32)
    gate[0, :6] = [-200.0, -90.0, -20.0, 0.0, 30.0, 200.0]      # overflow territory
    up = rng.standard_normal((7, 45)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = act_mul(gate, up, kind)
    assert y.dtype == np.float32 and y.shape == gate.shape
    expect = ref(gate.astype(np.float64)) * up
    np.testing.assert_allclose(y, expect, rtol=2e-6, atol=1e-6)
    assert np.isfinite(y).all()


def test_act_mul_strided_views(rng):
    gu = rng.standard_normal((5, 2 * 33)).astype(np.float32)
    g, u = gu[:, :33], gu[:, 33:]                       # halves of a fused gate_up output
    np.testing.assert_allclose(act_mul(g, u, "silu"), ref_silu(g.astype(np.float64)) * u, rtol=2e-6, atol=1e-6)


def test_act_mul_bad_inputs():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="kind"):
        act_mul(a, a, "relu")
    with pytest.raises(ValueError, match="up"):
        act_mul(a, np.zeros((2, 4), np.float32), "silu")
