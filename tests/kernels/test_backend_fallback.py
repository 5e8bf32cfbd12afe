"""TritonBackend.load_qtensor: a GGML type without a GPU kernel (IQ4_NL here: llama.cpp's
quantizer falls back to it for K-quant tensors whose rows are not a multiple of 256) is
dequantized on the host at load and held as F32, equal to gguf's reference dequantizer."""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # (set unconditionally, it turned later-imported kernels of
    os.environ.setdefault("TRITON_INTERPRET", "1")  # a GPU run into interpreted ones)
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from forge.kernels import dequant as dq  # noqa: E402
from forge.kernels.backend import TritonBackend  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _backend() -> TritonBackend:
    be = object.__new__(TritonBackend)  # no GPU needed for loading weights
    be.device = torch.device(DEV)
    be.weight_bytes = 0
    be.converted_types = {}
    be._chunk_bytes, be._xq = {}, False
    be.act_dtype = torch.bfloat16
    return be


@pytest.mark.parametrize("rows,cols", [(5, 32), (3, 96)])
def test_iq4_nl_held_as_f32(rng, rows, cols):
    nb = cols // 32
    raw = rng.integers(0, 256, (rows, nb, 18), dtype=np.uint8)
    d = (rng.random((rows, nb)) * 0.1 + 0.01).astype(np.float16)
    raw[:, :, 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
    raw = raw.reshape(rows, nb * 18)
    be = _backend()
    qt = be.load_qtensor(int(Q.IQ4_NL), (rows, cols), raw)
    assert dq.TYPES[qt.ggml_type].name == "F32"
    assert be.converted_types == {int(Q.IQ4_NL): 1}
    assert be.weight_bytes >= rows * cols * 4
    want = quants.dequantize(raw, Q.IQ4_NL).reshape(rows, cols)
    got = dq.dequantize(qt).cpu().numpy()
    np.testing.assert_array_equal(got, want)


def test_unknown_type_is_a_clear_error():
    with pytest.raises(ValueError, match="not supported"):
        _backend().load_qtensor(9999, (1, 32), np.zeros(18, np.uint8))


def test_xq_chunking_follows_the_int8_weights(rng, monkeypatch):
    """rms_norm / act_mul quantize their decode outputs in the chunking of the int8-path types
    holding the most bytes (Q4_K and Q6_K: 4 x 8; Q8_0: 4 x 4); none with only float weights,
    float32 activations, on ROCm, or with FORGE_XQ_FUSE=0."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as G

    def load(be, t, rows, cols):
        block, nbytes = GGML_QUANT_SIZES[t]
        raw = rng.integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8)
        be.load_qtensor(int(t), (rows, cols), raw)

    monkeypatch.delenv("FORGE_XQ_FUSE", raising=False)
    be = _backend()
    load(be, G.F16, 4, 256)
    assert be.xq_chunking is None
    load(be, G.Q8_0, 2, 256)
    assert be.xq_chunking == (4, 4)
    load(be, G.Q4_K, 4, 512)                  # more bytes than the Q8_0 weight
    assert be.xq_chunking == (4, 8)
    be.act_dtype = torch.float32
    be._xq = False
    assert be.xq_chunking is None
    be.act_dtype = torch.bfloat16
    be._xq = False
    monkeypatch.setenv("FORGE_XQ_FUSE", "0")
    assert be.xq_chunking is None
    monkeypatch.delenv("FORGE_XQ_FUSE")
    be._xq = False
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert be.xq_chunking is None
