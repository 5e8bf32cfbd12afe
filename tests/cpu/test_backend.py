"""forge/cpu/backend.py: NumpyBackend wiring, weight policies and the small ops."""
from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from forge.cpu.backend import NumpyBackend
from forge.runtime.backend import Backend, ForwardBatch, RopeSpec, get_backend


def q8(rng, rows, cols):
    return quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), Q.Q8_0)


def test_implements_the_protocol():
    be = get_backend("cpu")
    assert isinstance(be, NumpyBackend) and be.name == "cpu" and be.act_dtype == np.float32
    for name in [n for n in dir(Backend) if not n.startswith("_")]:
        assert callable(getattr(be, name, None)) or name in ("name", "act_dtype"), name


def test_auto_policy_respects_the_budget(rng):
    be = NumpyBackend(max_f32_bytes=2 * 64 * 64 * 4 + 10)
    layouts = [be.load_qtensor(int(Q.Q8_0), (64, 64), q8(rng, 64, 64)).layout for _ in range(4)]
    assert layouts == ["f32", "f32", "raw", "raw"]
    assert be.f32_bytes == 2 * 64 * 64 * 4
    f = be.load_qtensor(int(Q.F32), (4, 8), np.zeros((4, 8), np.float32))   # F32 costs no copy
    assert f.layout == "f32" and be.f32_bytes == 2 * 64 * 64 * 4
    assert NumpyBackend(weight_policy="raw").load_qtensor(int(Q.Q8_0), (2, 32), q8(rng, 2, 32)).layout == "raw"
    assert NumpyBackend(weight_policy="f32", max_f32_bytes=0).load_qtensor(
        int(Q.Q8_0), (2, 32), q8(rng, 2, 32)).layout == "f32"


def test_env_budget(monkeypatch, rng):
    monkeypatch.setenv("FORGE_CPU_MAX_F32_GB", "0")
    assert NumpyBackend().load_qtensor(int(Q.Q8_0), (2, 32), q8(rng, 2, 32)).layout == "raw"
    monkeypatch.setenv("FORGE_CPU_MAX_F32_GB", "lots")
    with pytest.raises(ValueError, match="FORGE_CPU_MAX_F32_GB"):
        NumpyBackend()


def test_bad_arguments():
    with pytest.raises(ValueError, match="weight_policy"):
        NumpyBackend(weight_policy="int8")
    with pytest.raises(ValueError, match="kv_dtype"):
        NumpyBackend(kv_dtype="bf16")
    with pytest.raises(ValueError, match="num_blocks"):
        NumpyBackend().alloc_kv(0, 16, 2, 64, 64)


def test_alloc_kv_and_dequantize(rng):
    k, v = NumpyBackend().alloc_kv(3, 16, 2, 40, 24)
    assert k.shape == (3, 16, 2, 40) and v.shape == (3, 16, 2, 24) and k.dtype == np.float32
    assert not k.any() and not v.any()
    k16, _ = NumpyBackend(kv_dtype="f16").alloc_kv(1, 4, 1, 8, 8)
    assert k16.dtype == np.float16
    raw = q8(rng, 5, 64)
    be = NumpyBackend(weight_policy="raw")
    np.testing.assert_array_equal(be.dequantize(be.load_qtensor(int(Q.Q8_0), (5, 64), raw)),
                                  quants.dequantize(raw, Q.Q8_0))


def test_small_ops(rng):
    be = NumpyBackend()
    x = rng.standard_normal((5, 7)).astype(np.float32) * 40
    y = rng.standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(be.add(x, y), x + y)
    with pytest.raises(ValueError, match="y"):
        be.add(x, y[:, :3])
    capped = be.softcap(x, 30.0)
    assert capped.dtype == np.float32
    np.testing.assert_allclose(capped, 30.0 * np.tanh(x.astype(np.float64) / 30.0), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(be.gather_rows(x, np.array([4, 0, 4])), x[[4, 0, 4]])
    assert be.to_numpy(be.asarray([1, 2], np.int32)).dtype == np.int32
    be.synchronize()


def test_rope_then_attention_through_forward_batch(rng):
    """Two sequences through the backend: rope writes the cache, attention reads it back.
    Reference: dense causal attention over the rotated q/k of the same tokens, in float64."""
    be = NumpyBackend()
    heads, kvh, d = 4, 2, 16
    kc, vc = be.alloc_kv(8, 4, kvh, d, d)
    lens = [6, 3]
    t = sum(lens)
    q = rng.standard_normal((t, heads * d)).astype(np.float32)
    k = rng.standard_normal((t, kvh * d)).astype(np.float32)
    v = rng.standard_normal((t, kvh * d)).astype(np.float32)
    positions = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2], np.int32)
    tables = np.array([[5, 2], [7, 0]], np.int32)
    slots = np.array([5 * 4 + 0, 5 * 4 + 1, 5 * 4 + 2, 5 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1,
                      7 * 4 + 0, 7 * 4 + 1, 7 * 4 + 2], np.int64)
    batch = ForwardBatch(token_ids=np.zeros(t, np.int32), positions=positions,
                         query_start_loc=np.array([0, 6, 9], np.int32), seq_lens=np.array(lens, np.int32),
                         block_tables=tables, slot_mapping=slots, logits_indices=np.array([5, 8]),
                         max_query_len=6, max_seq_len=6, num_seqs=2, num_tokens=t)
    spec = RopeSpec(rot_dim=d, base=10000.0, style="neox")
    qr = be.rope(q, k, v, positions, kc, vc, slots, spec, heads, kvh, d)
    kr = be.rope(k, k, v, positions, kc.copy(), vc.copy(), slots, spec, kvh, kvh, d)  # rotated k
    out = be.attention(qr, kc, vc, batch, heads, kvh, 1 / math.sqrt(d))
    ref = np.zeros((t, heads, d))
    q3, k3, v3 = (a.astype(np.float64).reshape(t, -1, d) for a in (qr, kr, v))
    for s0, n in ((0, 6), (6, 3)):
        for i in range(n):
            for h in range(heads):
                sc = np.array([q3[s0 + i, h] @ k3[s0 + j, h // 2] / math.sqrt(d) for j in range(i + 1)])
                w = np.exp(sc - sc.max())
                ref[s0 + i, h] = (w[:, None] * v3[s0:s0 + i + 1, h // 2]).sum(0) / w.sum()
    np.testing.assert_allclose(out, ref.reshape(t, -1), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("policy", ["f32", "raw"])
def test_fuse_rows(policy, rng):
    be = NumpyBackend(weight_policy=policy)
    raws = [q8(rng, r, 64) for r in (6, 2, 2)]
    mats = [be.load_qtensor(int(Q.Q8_0), (r.shape[0], 64), r) for r in raws]
    fused = be.fuse_rows(mats)
    assert fused.shape == (10, 64) and fused.layout == mats[0].layout
    ref = np.concatenate([quants.dequantize(r, Q.Q8_0) for r in raws])
    np.testing.assert_array_equal(be.dequantize(fused), ref)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = be.linear(x, fused)
    np.testing.assert_allclose(y[:, 6:8], be.linear(x, mats[1]), rtol=1e-6, atol=1e-6)
    for m, r in zip(mats, raws):                       # inputs now view the fused rows
        assert np.shares_memory(m.data, fused.data)
        np.testing.assert_array_equal(be.dequantize(m), quants.dequantize(r, Q.Q8_0))
    with pytest.raises(ValueError, match="mats"):
        be.fuse_rows([mats[0], be.load_qtensor(int(Q.F32), (2, 64), np.zeros((2, 64), np.float32))]
                     if policy == "raw" else [mats[0], be.load_qtensor(int(Q.Q8_0), (2, 32), q8(rng, 2, 32))])
    np.testing.assert_array_equal(be.concat([np.ones(2, np.float32), np.zeros(3, np.float32)]), [1, 1, 0, 0, 0])
