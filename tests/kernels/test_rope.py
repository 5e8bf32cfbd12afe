"""rope + paged KV write (Triton) against a float64 NumPy reference; runs under TRITON_INTERPRET=1."""
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels.rope import rope  # noqa: E402
from forge.runtime.backend import RopeSpec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# relative output error allowed from dtype rounding (the angle error is added per position below)
RTOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def ref_rotate(x: np.ndarray, pos: np.ndarray, rot: int, base: float, style: str, freq_scale: float,
               ff: np.ndarray | None) -> np.ndarray:
    """x [T, H, D] float64. theta_i = pos * freq_scale * base^(-2i/rot) / ff[i]; pairs by style."""
    out = x.copy()
    for i in range(rot // 2):
        inv = freq_scale * base ** (-2.0 * i / rot)
        if ff is not None:
            inv /= ff[i]
        th = pos.astype(np.float64) * inv
        c, s = np.cos(th)[:, None], np.sin(th)[:, None]
        a, b = (2 * i, 2 * i + 1) if style == "norm" else (i, i + rot // 2)
        out[:, :, a] = x[:, :, a] * c - x[:, :, b] * s
        out[:, :, b] = x[:, :, a] * s + x[:, :, b] * c
    return out


def to_t(a, dtype):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device=DEV, dtype=dtype)


def as64(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


def assert_close(got: np.ndarray, want: np.ndarray, dtype, max_pos: int, what: str):
    scale = max(1.0, float(np.abs(want).max()))
    # float32 angle: |d theta| <~ 2 * pos * 2^-24 (inv_freq and product rounding) + cos/sin ulps
    atol = scale * (RTOL[dtype] + 2.0 * max_pos * 2.0 ** -24 * 1.5)
    assert not np.isnan(got).any(), f"{what}: NaN in output (unwritten?)"
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=atol, err_msg=what)


def run_case(rng, *, t, h, hkv, dh, dv, rot, style, base=10000.0, freq_scale=1.0, ff=None,
             act=torch.float32, cache=torch.float32, nb=37, bs=16, max_pos=50, fused_qkv=False,
             pos_dtype=torch.int32):
    pos = rng.integers(0, max_pos, size=t)
    slots = rng.choice(nb * bs, size=t, replace=False).astype(np.int64)
    q = rng.standard_normal((t, h * dh))
    k = rng.standard_normal((t, hkv * dh))
    v = rng.standard_normal((t, hkv * dv))
    if fused_qkv:
        qkv = to_t(np.concatenate([q, k, v], axis=1), act)
        qt, kt, vt = qkv.split([h * dh, hkv * dh, hkv * dv], dim=1)
        assert not qt.is_contiguous()
    else:
        qt, kt, vt = to_t(q, act), to_t(k, act), to_t(v, act)
    kc = torch.full((nb, bs, hkv, dh), float("nan"), dtype=cache, device=DEV)
    vc = torch.full((nb, bs, hkv, dv), float("nan"), dtype=cache, device=DEV)
    fft = None if ff is None else to_t(ff, torch.float32)
    spec = RopeSpec(rot_dim=rot, base=base, style=style, freq_scale=freq_scale, freq_factors=fft)
    q_out = rope(qt, kt, vt, torch.tensor(pos, dtype=pos_dtype, device=DEV), kc, vc,
                 torch.tensor(slots, device=DEV), spec, h, hkv, dh)
    assert q_out.shape == (t, h * dh) and q_out.dtype == act

    q64, k64, v64 = as64(qt), as64(kt), as64(vt)
    want_q = ref_rotate(q64.reshape(t, h, dh), pos, rot, base, style, freq_scale, ff)
    want_k = ref_rotate(k64.reshape(t, hkv, dh), pos, rot, base, style, freq_scale, ff)
    assert_close(as64(q_out).reshape(t, h, dh), want_q, act, max_pos, "q")
    kcn, vcn = as64(kc).reshape(nb * bs, hkv, dh), as64(vc).reshape(nb * bs, hkv, dv)
    tol_dtype = cache if RTOL[cache] > RTOL[act] else act
    assert_close(kcn[slots], want_k, tol_dtype, max_pos, "k_cache")
    np.testing.assert_allclose(vcn[slots], v64.reshape(t, hkv, dv), rtol=RTOL[cache], atol=0, err_msg="v_cache")
    untouched = np.setdiff1d(np.arange(nb * bs), slots)
    assert np.isnan(kcn[untouched]).all() and np.isnan(vcn[untouched]).all(), "wrote outside slot_mapping"


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope_full_rotation(rng, nan_empty, style):
    run_case(rng, t=7, h=4, hkv=2, dh=64, dv=64, rot=64, style=style)


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope_partial_gqa(rng, nan_empty, style):
    """head_dim 40 with rot_dim 24, GQA 6:2, slots spread over many blocks."""
    run_case(rng, t=7, h=6, hkv=2, dh=40, dv=40, rot=24, style=style, base=500000.0, nb=61, bs=4)


def test_rope_freq_factors_and_scale(rng, nan_empty):
    """llama3-style rope_freqs (theta_i /= factors[i]) with a freq_scale and per-layer base."""
    ff = rng.uniform(1.0, 8.0, size=16)
    run_case(rng, t=5, h=4, hkv=1, dh=32, dv=32, rot=32, style="norm", base=1e6, freq_scale=0.25, ff=ff,
             pos_dtype=torch.int64)


def test_rope_v_head_dim_differs(rng, nan_empty):
    run_case(rng, t=6, h=4, hkv=2, dh=48, dv=24, rot=48, style="neox")


@pytest.mark.parametrize("act,cache", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                       (torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16)])
def test_rope_dtypes(rng, nan_empty, act, cache):
    run_case(rng, t=5, h=4, hkv=2, dh=64, dv=64, rot=64, style="neox", act=act, cache=cache)


def test_rope_fused_qkv_views(rng, nan_empty):
    """q, k, v as column slices of one fused qkv output (row stride > width), no copies."""
    run_case(rng, t=7, h=6, hkv=2, dh=40, dv=40, rot=40, style="norm", fused_qkv=True)


def test_rope_large_positions(rng, nan_empty):
    """Positions up to 100k: float32 angles stay within the documented error bound."""
    run_case(rng, t=6, h=2, hkv=1, dh=32, dv=32, rot=32, style="neox", base=1e6, max_pos=100_000)


def test_rope_negative_and_out_of_range_slots_skipped(rng, nan_empty):
    t, h, hkv, dh, nb, bs = 4, 2, 1, 16, 3, 4
    q = to_t(rng.standard_normal((t, h * dh)), torch.float32)
    k = to_t(rng.standard_normal((t, hkv * dh)), torch.float32)
    v = to_t(rng.standard_normal((t, hkv * dh)), torch.float32)
    kc = torch.full((nb, bs, hkv, dh), float("nan"), device=DEV)
    vc = torch.full((nb, bs, hkv, dh), float("nan"), device=DEV)
    slots = torch.tensor([5, -1, 11, nb * bs + 3], device=DEV)
    pos = torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=DEV)
    rope(q, k, v, pos, kc, vc, slots, RopeSpec(16, 10000.0), h, hkv, dh)
    kf, vf = kc.reshape(nb * bs, -1).cpu(), vc.reshape(nb * bs, -1).cpu()
    written = {5, 11}
    for s in range(nb * bs):
        assert bool(torch.isnan(kf[s]).any()) == (s not in written)
        assert bool(torch.isnan(vf[s]).any()) == (s not in written)
    # position 0 is the identity rotation
    assert torch.allclose(kf[5], k[0].cpu(), atol=1e-6)
    assert torch.equal(vf[11], v[2].cpu())


@pytest.mark.parametrize("style,rot,act", [("norm", 16, torch.float32), ("neox", 8, torch.bfloat16)])
def test_rope_k_out_rows(rng, style, rot, act):
    """apply(..., k_out=) writes every token's rotated k row (a skipped slot's too) into k_out,
    equal to what the cache receives, against the float64 rotation; partial rotary passes the
    tail through."""
    from forge.kernels import rope as rope_mod

    t, h, hkv, dh, nb, bs = 6, 4, 2, 16, 3, 4
    pos = np.array([0, 5, 9, 2, 30, 7])
    q = to_t(rng.standard_normal((t, h * dh)), act)
    k = to_t(rng.standard_normal((t, hkv * dh)), act)
    v = to_t(rng.standard_normal((t, hkv * dh)), act)
    kc = torch.full((nb, bs, hkv, dh), float("nan"), dtype=act, device=DEV)
    vc = torch.full_like(kc, float("nan"))
    slots = torch.tensor([5, -1, 11, 0, nb * bs + 3, 2], device=DEV)
    spec = RopeSpec(rot, 10000.0, style=style)
    f = rope_mod.fused_args(q, k, v, torch.tensor(pos, dtype=torch.int32, device=DEV), kc, vc,
                            slots, spec, h, hkv, dh)
    k_out = torch.full((t, hkv * dh), float("nan"), dtype=act, device=DEV)
    rope_mod.apply(q, f, kc, vc, h, hkv, dh, k_out)
    want = ref_rotate(as64(k).reshape(t, hkv, dh), pos, rot, 10000.0, style, 1.0, None)
    assert_close(as64(k_out).reshape(t, hkv, dh), want, act, 30, "k_out")
    for i, sl in enumerate(slots.tolist()):
        if 0 <= sl < nb * bs:
            assert torch.equal(kc.reshape(nb * bs, -1)[sl], k_out[i])
    with pytest.raises(ValueError, match="k_out"):
        rope_mod.apply(q, f, kc, vc, h, hkv, dh, k_out[:, :-1])
    with pytest.raises(ValueError, match="k_out"):
        rope_mod.apply(q, f, kc, vc, h, hkv, dh, k_out.half() if act != torch.float16 else k_out.float())


def test_rope_empty_batch():
    z = torch.zeros(0, 32, device=DEV)
    kc = torch.zeros(2, 4, 1, 16, device=DEV)
    out = rope(z, torch.zeros(0, 16, device=DEV), torch.zeros(0, 16, device=DEV),
               torch.zeros(0, dtype=torch.int32, device=DEV), kc, kc.clone(),
               torch.zeros(0, dtype=torch.int64, device=DEV), RopeSpec(16, 1e4), 2, 1, 16)
    assert out.shape == (0, 32)


def test_rope_bad_inputs():
    t, h, hkv, dh = 3, 4, 2, 16
    q, k, v = (torch.zeros(t, n * dh, device=DEV) for n in (h, hkv, hkv))
    kc = torch.zeros(4, 8, hkv, dh, device=DEV)
    pos = torch.zeros(t, dtype=torch.int32, device=DEV)
    sl = torch.arange(t, device=DEV)
    ok = dict(spec=RopeSpec(16, 1e4), num_heads=h, num_kv_heads=hkv, head_dim=dh)
    with pytest.raises(ValueError, match="q"):
        rope(q[:, :-1], k, v, pos, kc, kc.clone(), sl, **ok)
    with pytest.raises(ValueError, match="k_cache"):
        rope(q, k, v, pos, kc[:, :, :1], kc.clone(), sl, **ok)
    with pytest.raises(ValueError, match="slot_mapping"):
        rope(q, k, v, pos, kc, kc.clone(), sl[:2], **ok)
    with pytest.raises(ValueError, match="positions"):
        rope(q, k, v, pos.float(), kc, kc.clone(), sl, **ok)
    with pytest.raises(ValueError, match="rot_dim"):
        rope(q, k, v, pos, kc, kc.clone(), sl, **{**ok, "spec": RopeSpec(15, 1e4)})
    with pytest.raises(ValueError, match="style"):
        rope(q, k, v, pos, kc, kc.clone(), sl, **{**ok, "spec": RopeSpec(16, 1e4, style="yarn")})
    with pytest.raises(ValueError, match="freq_factors"):
        rope(q, k, v, pos, kc, kc.clone(), sl,
             **{**ok, "spec": RopeSpec(16, 1e4, freq_factors=torch.ones(5, device=DEV))})
    with pytest.raises(ValueError, match="v"):
        rope(q, k, torch.zeros(t, hkv * dh + 1, device=DEV), pos, kc, kc.clone(), sl, **ok)


@pytest.mark.gpu
def test_rope_big_gpu(rng):
    run_case(rng, t=512, h=32, hkv=8, dh=128, dv=128, rot=128, style="norm", act=torch.bfloat16,
             cache=torch.bfloat16, nb=4096, bs=16, max_pos=8192,
             ff=rng.uniform(1.0, 8.0, size=64))


@pytest.mark.gpu
def test_rope_int64_slot_offsets_gpu(rng):
    """slot * (Hkv * Dh) > 2^31: cache offsets must be computed in 64 bits."""
    hkv, dh, bs = 2, 256, 32
    nb = (1 << 31) // (bs * hkv * dh) + 8  # ~4.3 GB of bf16 K cache
    try:
        kc = torch.zeros((nb, bs, hkv, dh), dtype=torch.bfloat16, device=DEV)
        vc = torch.zeros((nb, bs, hkv, 8), dtype=torch.bfloat16, device=DEV)
    except RuntimeError:
        pytest.skip("not enough GPU memory")
    t, h = 4, 4
    slots = torch.tensor([nb * bs - 1, nb * bs - 40, 3, (1 << 31) // (hkv * dh) + 5], device=DEV)
    pos = torch.tensor([0, 7, 100, 3], dtype=torch.int32, device=DEV)
    q = to_t(rng.standard_normal((t, h * dh)), torch.bfloat16)
    k = to_t(rng.standard_normal((t, hkv * dh)), torch.bfloat16)
    v = to_t(rng.standard_normal((t, hkv * 8)), torch.bfloat16)
    rope(q, k, v, pos, kc, vc, slots, RopeSpec(dh, 1e4, style="neox"), h, hkv, dh)
    want = ref_rotate(as64(k).reshape(t, hkv, dh), pos.cpu().numpy(), dh, 1e4, "neox", 1.0, None)
    kf, vf = kc.view(nb * bs, hkv, dh), vc.view(nb * bs, hkv, 8)
    for i, s in enumerate(slots.tolist()):
        np.testing.assert_allclose(as64(kf[s]), want[i], rtol=1e-2, atol=2e-2)
        assert torch.equal(vf[s].reshape(-1), v[i])
    # nothing else in the 4 GB cache was touched (random rotated values are never exactly 0)
    assert int(torch.count_nonzero(kc)) == t * hkv * dh


def test_rope_inv_freq_cache_follows_the_tensor(rng):
    """inv_freq is cached per spec; a new freq_factors tensor (even at a reused address) or an
    in-place change of one is never served a stale table."""
    from forge.kernels.rope import _inv_freq

    dev = torch.device(DEV)
    want = lambda f: (np.exp2(np.arange(8) * (-2.0 * math.log2(1e4) / 16)) / f).astype(np.float32)  # noqa: E731
    for _ in range(4):
        f = rng.uniform(1, 8, 8)
        ff = torch.tensor(f, dtype=torch.float32, device=dev)
        f32 = ff.double().cpu().numpy()
        np.testing.assert_array_equal(_inv_freq(16, 1e4, 1.0, ff, dev).cpu().numpy(), want(f32))
        assert _inv_freq(16, 1e4, 1.0, ff, dev) is _inv_freq(16, 1e4, 1.0, ff, dev)
        ff.mul_(2.0)
        np.testing.assert_array_equal(_inv_freq(16, 1e4, 1.0, ff, dev).cpu().numpy(), want(2 * f32))
        del ff


def test_rope_inv_freq_computed_once_per_spec(rng):
    """Repeated rope calls with one spec (a decode step per layer) reuse one inv_freq table:
    nothing is recomputed per call (inside a captured graph that would add kernels)."""
    from forge.kernels import rope as rope_mod

    ff = torch.tensor(rng.uniform(1, 8, 16), dtype=torch.float32, device=DEV).reshape(1, 16)
    spec = RopeSpec(rot_dim=32, base=1e4, style="norm", freq_scale=1.0, freq_factors=ff)
    t, h, hkv, dh = 3, 4, 2, 32
    q = torch.randn(t, h * dh, device=DEV)
    k = torch.randn(t, hkv * dh, device=DEV)
    kc = torch.zeros(4, 4, hkv, dh, device=DEV)
    pos = torch.arange(t, dtype=torch.int32, device=DEV)
    slots = torch.arange(t, dtype=torch.int64, device=DEV)
    rope(q, k, k, pos, kc, kc.clone(), slots, spec, h, hkv, dh)
    calls = []
    tables = {id(v[1]) for v in rope_mod._INV_FREQ.values()}
    for _ in range(3):
        rope(q, k, k, pos, kc, kc.clone(), slots, spec, h, hkv, dh)
        calls.append({id(v[1]) for v in rope_mod._INV_FREQ.values()})
    assert all(c == tables for c in calls), "inv_freq recomputed for the same spec"
