"""forge/cpu/rope.py: rotation per element in float64, and the paged KV write."""
from __future__ import annotations

import math

import numpy as np
import pytest

from forge.cpu.rope import rope
from forge.runtime.backend import RopeSpec


def reference_rotate(x, pos, spec: RopeSpec, heads: int, dh: int) -> np.ndarray:
    """x [T, heads*dh] -> rotated float64, one element at a time."""
    t = x.shape[0]
    x = x.reshape(t, heads, dh).astype(np.float64)
    out = x.copy()
    half = spec.rot_dim // 2
    for n in range(t):
        for h in range(heads):
            for i in range(half):
                theta = pos[n] * spec.freq_scale * spec.base ** (-2.0 * i / spec.rot_dim)
                if spec.freq_factors is not None:
                    theta /= float(spec.freq_factors[i])
                c, s = math.cos(theta), math.sin(theta)
                a, b = (2 * i, 2 * i + 1) if spec.style == "norm" else (i, i + half)
                out[n, h, a] = x[n, h, a] * c - x[n, h, b] * s
                out[n, h, b] = x[n, h, a] * s + x[n, h, b] * c
    return out.reshape(t, heads * dh)


def run_case(rng, spec, t=5, heads=6, kv_heads=2, dh=40, dv=24, num_blocks=6, block_size=4, neg_slots=0):
    q = rng.standard_normal((t, heads * dh)).astype(np.float32)
    k = rng.standard_normal((t, kv_heads * dh)).astype(np.float32)
    v = rng.standard_normal((t, kv_heads * dv)).astype(np.float32)
    pos = rng.integers(0, 5000, size=t).astype(np.int32)
    slots = rng.permutation(num_blocks * block_size)[:t].astype(np.int64)
    slots[:neg_slots] = -1
    kc = np.zeros((num_blocks, block_size, kv_heads, dh), np.float32)
    vc = np.zeros((num_blocks, block_size, kv_heads, dv), np.float32)
    qr = rope(q, k, v, pos, kc, vc, slots, spec, heads, kv_heads, dh)
    assert qr.dtype == np.float32 and qr.shape == q.shape
    # float32 cos/sin of angles up to ~5000 rad: ~1e-6 relative error per term
    np.testing.assert_allclose(qr, reference_rotate(q, pos, spec, heads, dh), rtol=1e-5, atol=2e-5)
    kref = reference_rotate(k, pos, spec, kv_heads, dh).reshape(t, kv_heads, dh)
    kflat, vflat = kc.reshape(-1, kv_heads, dh), vc.reshape(-1, kv_heads, dv)
    written = np.zeros(kflat.shape[0], bool)
    for n in range(t):
        if slots[n] < 0:
            continue
        written[slots[n]] = True
        np.testing.assert_allclose(kflat[slots[n]], kref[n], rtol=1e-5, atol=2e-5)
        np.testing.assert_array_equal(vflat[slots[n]], v[n].reshape(kv_heads, dv))
    assert not kflat[~written].any() and not vflat[~written].any()
    return qr


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize("rot_dim", [40, 24])
def test_rope_styles_and_partial(style, rot_dim, rng):
    run_case(rng, RopeSpec(rot_dim=rot_dim, base=10000.0, style=style))


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope_freq_scale_and_factors(style, rng):
    ff = rng.uniform(1.0, 8.0, size=12).astype(np.float32)
    run_case(rng, RopeSpec(rot_dim=24, base=500000.0, style=style, freq_scale=0.25, freq_factors=ff))


def test_rope_skips_negative_slots_and_gqa_1(rng):
    run_case(rng, RopeSpec(rot_dim=64, base=10000.0, style="neox"), t=7, heads=3, kv_heads=3, dh=64,
             dv=64, neg_slots=2)


def test_rope_norm_and_neox_differ(rng):
    """The two styles are different permutations: guard against one silently aliasing the other."""
    q = rng.standard_normal((1, 8)).astype(np.float32)
    kc = np.zeros((1, 1, 1, 8), np.float32)
    out = [rope(q, q, q, np.array([3]), kc, kc.copy(), np.array([0]), RopeSpec(8, 10000.0, s), 1, 1, 8)
           for s in ("norm", "neox")]
    assert not np.allclose(out[0], out[1])


def test_rope_position_zero_is_identity(rng):
    q = rng.standard_normal((2, 2 * 16)).astype(np.float32)
    kc = np.zeros((1, 2, 2, 16), np.float32)
    qr = rope(q, q, q, np.zeros(2, np.int32), kc, kc.copy(), np.array([0, 1]), RopeSpec(16, 1e4), 2, 2, 16)
    np.testing.assert_array_equal(qr, q)


def test_rope_bad_inputs(rng):
    q = np.zeros((2, 32), np.float32)
    kc = np.zeros((2, 2, 1, 16), np.float32)
    args = (np.zeros(2, np.int32), kc, kc.copy(), np.array([0, 1]))
    with pytest.raises(ValueError, match="style"):
        rope(q, q[:, :16], q[:, :16], *args, RopeSpec(16, 1e4, "gptj"), 2, 1, 16)
    with pytest.raises(ValueError, match="rot_dim"):
        rope(q, q[:, :16], q[:, :16], *args, RopeSpec(18, 1e4), 2, 1, 16)
    with pytest.raises(ValueError, match="k:"):
        rope(q, q, q[:, :16], *args, RopeSpec(16, 1e4), 2, 1, 16)
    with pytest.raises(ValueError, match="slot_mapping"):
        rope(q, q[:, :16], q[:, :16], args[0], kc, kc.copy(), np.array([0, 4]), RopeSpec(16, 1e4), 2, 1, 16)
