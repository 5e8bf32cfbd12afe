"""forge/cpu/dequant.py against gguf-py's own dequantization, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf import quants

from forge.cpu import dequant
from forge.cpu.dequant import dequantize, dequantize_rows, load_qtensor

QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16]

# Offsets of the fp16 scale fields in one block, for the types written from random bytes.
F16_FIELDS = {
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
    Q.IQ4_NL: (0,), Q.IQ4_XS: (0,), Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,),
    Q.IQ3_XXS: (0,), Q.IQ3_S: (0,), Q.IQ1_S: (0,), Q.TQ1_0: (52,), Q.TQ2_0: (64,),
}


def random_blocks(rng, qt: Q, rows: int, cols: int) -> np.ndarray:
    """Random GGUF bytes [rows, bytes_per_row] whose fp16 scales are finite and sane."""
    block, size = GGML_QUANT_SIZES[qt]
    nb = cols // block
    raw = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    scales = rng.uniform(-1, 1, size=(rows, nb, len(F16_FIELDS[qt]))).astype(np.float16)
    for j, off in enumerate(F16_FIELDS[qt]):
        raw[:, :, off:off + 2] = scales[:, :, j:j + 1].view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


def check_both_policies(raw, qt: Q, rows: int, cols: int, rng):
    ref = quants.dequantize(raw, qt)
    assert ref.shape == (rows, cols)
    for policy in ("f32", "raw"):
        t = load_qtensor(int(qt), (rows, cols), raw, policy=policy)
        assert t.shape == (rows, cols)
        assert t.layout == ("f32" if policy == "f32" or qt == Q.F32 else "raw")
        full = dequantize(t)
        assert full.dtype == np.float32 and full.shape == (rows, cols)
        np.testing.assert_array_equal(full, ref)
        a = int(rng.integers(0, rows))
        b = int(rng.integers(a, rows + 1))
        np.testing.assert_array_equal(dequantize(t, a, b), ref[a:b])
        idx = rng.integers(0, rows, size=9)
        np.testing.assert_array_equal(dequantize_rows(t, idx), ref[idx])


@pytest.mark.parametrize("qt", QUANTIZABLE, ids=lambda q: q.name)
def test_quantized_roundtrip_matches_gguf(qt, rng, monkeypatch):
    monkeypatch.setattr(dequant, "CHUNK_ELEMS", 3 * 96)   # several rows per chunk, several chunks
    rows, cols = 13, 96
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3)).astype(np.float32)
    raw = quants.quantize(x, qt)
    if raw.dtype != np.uint8:                      # F16 comes back typed
        raw = raw.view(np.uint8).reshape(rows, -1)
    check_both_policies(raw, qt, rows, cols, rng)


@pytest.mark.parametrize("qt", list(F16_FIELDS), ids=lambda q: q.name)
def test_random_blocks_match_gguf(qt, rng, monkeypatch):
    monkeypatch.setattr(dequant, "CHUNK_ELEMS", 2 * 512)
    rows, cols = 7, 512
    raw = random_blocks(rng, qt, rows, cols)
    check_both_policies(raw, qt, rows, cols, rng)
    assert np.isfinite(quants.dequantize(raw, qt)).all()


def test_f32_is_a_view_and_typed_input_works(rng):
    x = rng.standard_normal((5, 33)).astype(np.float32)
    for policy in ("f32", "raw"):
        t = load_qtensor(int(Q.F32), (5, 33), x, policy=policy)
        assert t.layout == "f32" and np.shares_memory(t.data, x)
        np.testing.assert_array_equal(dequantize(t), x)
    h = rng.standard_normal((4, 10)).astype(np.float16)      # typed f16 rows, as the reader gives
    t = load_qtensor(int(Q.F16), (4, 10), h, policy="raw")
    np.testing.assert_array_equal(dequantize(t), h.astype(np.float32))


def test_bad_inputs():
    with pytest.raises(ValueError, match="Q8_1"):
        load_qtensor(int(Q.Q8_1), (1, 32), np.zeros((1, 36), np.uint8))
    with pytest.raises(ValueError, match="999"):
        load_qtensor(999, (1, 32), np.zeros((1, 36), np.uint8))
    with pytest.raises(ValueError, match="raw"):
        load_qtensor(int(Q.Q8_0), (2, 32), np.zeros((1, 34), np.uint8))
    with pytest.raises(ValueError, match="block size"):
        load_qtensor(int(Q.Q8_0), (1, 48), np.zeros((1, 51), np.uint8))
    with pytest.raises(ValueError, match="policy"):
        load_qtensor(int(Q.Q8_0), (1, 32), np.zeros((1, 34), np.uint8), policy="fp8")
    t = load_qtensor(int(Q.Q8_0), (1, 32), np.zeros((1, 34), np.uint8), policy="raw")
    with pytest.raises(ValueError, match="row range"):
        dequantize(t, 0, 2)

