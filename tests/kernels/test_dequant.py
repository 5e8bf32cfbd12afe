"""forge.kernels.dequant: repack + Triton dequantize, bit-exact against gguf.quants.dequantize.

Runs under TRITON_INTERPRET=1 on the CPU and natively on a GPU. Blocks come from gguf's own
quantizer (where gguf implements it) and from uniformly random bytes with sane fp16 scale fields,
so every bit of every quant field is exercised. Equality is exact: float32 bit patterns.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants  # noqa: E402

from forge.kernels import dequant as dq  # noqa: E402
from forge.runtime.backend import QTensor  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
FLOAT_TYPES = ["F32", "F16", "BF16"]
QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES
# Byte offsets of the fp16 scale fields (d, and dmin / m) inside one GGUF block.
SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
                "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def gguf_type(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


def can_quantize(name: str) -> bool:
    t = gguf_type(name)
    try:
        quants.quantize(np.zeros((1, GGML_QUANT_SIZES[t][0]), np.float32), t)
    except NotImplementedError:
        return False
    return True


def random_rows(name: str, rows: int, cols: int, rng: np.random.Generator,
                source: str = "bytes", specials: bool = True) -> np.ndarray:
    """GGUF bytes of type `name`, uint8 [rows, bytes_per_row].

    source "quantize": gguf's quantizer applied to normal data (floats: the data itself, with a
    few special values unless `specials` is False: +-0, fp16 subnormals, the fp16 maximum).
    source "bytes": uniformly random
    bytes, then every fp16 scale field set to a random sign * 2^U(-14, -2) (sometimes an fp16
    subnormal), so that no scale is inf/NaN but all other bits are arbitrary.
    """
    t = gguf_type(name)
    block, tsize = GGML_QUANT_SIZES[t]
    if source == "quantize":
        data = rng.standard_normal((rows, cols)).astype(np.float32)
        if name in FLOAT_TYPES and specials:
            flat = data.reshape(-1)
            flat[:6] = [0.0, -0.0, 3e-6, -5e-7, 65504.0, -1.5]
        out = quants.quantize(data, t)
        return np.ascontiguousarray(out).view(np.uint8).reshape(rows, -1)
    assert name in QUANT_TYPES, "random bytes only make sense for block types"
    nb = cols // block
    blk = rng.integers(0, 256, (rows, nb, tsize), dtype=np.uint8)
    for off in SCALE_FIELDS[name]:
        mag = np.exp2(rng.uniform(-14, -2, (rows, nb)))
        mag[rng.random((rows, nb)) < 0.05] = 2.0 ** -20  # an fp16 subnormal now and then
        sign = np.where(rng.random((rows, nb)) < 0.5, -1.0, 1.0)
        blk[:, :, off:off + 2] = (sign * mag).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return blk.reshape(rows, nb * tsize)


def reference(name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return quants.dequantize(raw, gguf_type(name)).reshape(rows, cols).astype(np.float32)


def assert_bits_equal(got: torch.Tensor, want: np.ndarray) -> None:
    g = got.cpu().numpy()
    assert g.shape == want.shape and g.dtype == want.dtype
    bad = np.flatnonzero(g.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, (f"{bad.size} of {g.size} values differ; first at flat index {bad[0]}: "
                           f"got {g.reshape(-1)[bad[0]]!r}, want {want.reshape(-1)[bad[0]]!r}")


def cases():
    for name in ALL_TYPES:
        if can_quantize(name):
            yield name, "quantize"
        if name in QUANT_TYPES:
            yield name, "bytes"


@pytest.mark.parametrize("name,source", list(cases()))
def test_dequantize_bit_exact(name, source, rng):
    info = dq.TYPES[int(gguf_type(name))]
    rows = 5
    cols = info.block * 3 if info.block > 1 else 37  # 37: float rows end inside a tile
    raw = random_rows(name, rows, cols, rng, source)
    qt = dq.repack(int(gguf_type(name)), (rows, cols), torch.from_numpy(raw).to(DEV))
    assert qt.layout == dq.LAYOUT and qt.shape == (rows, cols)
    assert_bits_equal(dq.dequantize(qt), reference(name, raw, rows, cols))


# (byte offset of d, of dmin, of the scale bytes, number of scale bytes) in one K-quant block
MIN_FIELDS = {"Q2_K": (80, 82, 0, 16), "Q4_K": (0, 2, 4, 12), "Q5_K": (0, 2, 4, 12)}


@pytest.mark.parametrize("name", list(MIN_FIELDS))
def test_dequantize_signed_zeros(name, rng):
    """K-quants with mins: w = d*sc*q - dmin*min. With d < 0 and a zero min, a zero product
    gives -0.0 - (+0.0) = -0.0 in gguf; adding a negated min instead (-0.0 + -(+0.0), where a
    GPU negates as 0 - x) would give +0.0. Half the blocks have all scales and mins zero."""
    info = dq.TYPES[int(gguf_type(name))]
    rows, cols = 4, info.block * 4
    raw = random_rows(name, rows, cols, rng).reshape(rows, cols // info.block, info.type_size)
    d_off, m_off, s_off, s_len = MIN_FIELDS[name]
    for off, sign in ((d_off, 1), (m_off, 0)):
        hi = raw[:, :, off + 1]
        raw[:, :, off + 1] = (hi & 0x7F) | (0x80 * sign)      # d negative, dmin positive
    raw[:, ::2, s_off:s_off + s_len] = 0                        # zero scales and mins
    if name == "Q2_K":
        raw[:, 1::2, s_off:s_off + s_len] &= 0x0F               # mins zero, scales random
    raw = raw.reshape(rows, -1)
    want = reference(name, raw, rows, cols)
    assert np.any(want.view(np.uint32) == 0x80000000), "the case must produce -0.0"
    qt = dq.repack(int(gguf_type(name)), (rows, cols), torch.from_numpy(raw).to(DEV))
    assert_bits_equal(dq.dequantize(qt), want)


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_K", "Q6_K", "Q5_0", "Q3_K"])
def test_dequantize_gather_and_dtypes(name, rng):
    """rows= gathers (an embedding lookup) in any order with repeats; bf16/fp16 outputs are the
    float32 values rounded to nearest even (Triton's CPU interpreter truncates float32 -> bf16
    instead, so there a 1-ulp difference is allowed)."""
    info = dq.TYPES[int(gguf_type(name))]
    rows, cols = 9, info.block * 2 if info.block > 1 else 24
    raw = random_rows(name, rows, cols, rng, "bytes" if name in QUANT_TYPES else "quantize")
    ref = reference(name, raw, rows, cols)
    qt = dq.repack(int(gguf_type(name)), (rows, cols), torch.from_numpy(raw).to(DEV))
    idx = rng.integers(0, rows, 7)
    idx[0], idx[1] = rows - 1, idx[2]
    for itype in (torch.int32, torch.int64):
        got = dq.dequantize(qt, rows=torch.from_numpy(idx).to(itype).to(DEV))
        assert_bits_equal(got, ref[idx])
    for dt in (torch.bfloat16, torch.float16):
        got = dq.dequantize(qt, dtype=dt)
        want = torch.from_numpy(ref).to(dt)
        assert got.dtype == dt
        diff = (got.cpu().view(torch.int16).int() - want.view(torch.int16).int()).abs()
        assert int(diff.max()) <= (1 if INTERPRET and dt == torch.bfloat16 else 0)
    out = torch.full((rows, cols + 5), -1.0, device=DEV)[:, :cols]
    assert dq.dequantize(qt, out=out) is out
    assert_bits_equal(out.contiguous(), ref)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_1", "Q6_K", "F16"])
def test_repack_layout_is_aligned(name, rng):
    """Every plane row starts 16-byte aligned, and row strides are multiples of 64 bytes (16
    elements of any type a kernel views the plane as)."""
    info = dq.TYPES[int(gguf_type(name))]
    rows, cols = 3, info.block * 3 if info.block > 1 else 21
    raw = random_rows(name, rows, cols, rng, "bytes" if name in QUANT_TYPES else "quantize")
    qt = dq.repack(int(gguf_type(name)), (rows, cols), torch.from_numpy(raw).to(DEV))
    assert set(qt.data) == set(info.planes)
    for pname, t in qt.data.items():
        assert t.dtype == info.planes[pname][0]
        assert t.stride(1) == 1 and t.stride(0) % 16 == 0
        assert t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 64 == 0


def test_repack_accepts_typed_rows(rng):
    """F16 rows handed over as a float16 tensor (not bytes) are the same weight."""
    data = rng.standard_normal((4, 24)).astype(np.float16)
    qt = dq.repack(int(gguf_type("F16")), (4, 24), torch.from_numpy(data).to(DEV))
    assert_bits_equal(dq.dequantize(qt), data.astype(np.float32))


def test_bad_input_raises(rng):
    q4k = int(gguf_type("Q4_K"))
    raw = torch.from_numpy(random_rows("Q4_K", 2, 256, rng)).to(DEV)
    with pytest.raises(ValueError, match="ggml_type"):
        dq.repack(int(gguf_type("IQ2_XXS")), (2, 256), raw)
    with pytest.raises(ValueError, match="shape"):
        dq.repack(q4k, (2, 250), raw)
    with pytest.raises(ValueError, match="shape"):
        dq.repack(q4k, (2, 256, 1), raw)
    with pytest.raises(ValueError, match="raw"):
        dq.repack(q4k, (3, 256), raw)
    with pytest.raises(ValueError, match="raw"):
        dq.repack(q4k, (2, 256), raw.cpu().numpy())
    qt = dq.repack(q4k, (2, 256), raw)
    with pytest.raises(ValueError, match="qt"):
        dq.dequantize(QTensor(q4k, (2, 256), raw, "raw"))
    with pytest.raises(ValueError, match="rows"):
        dq.dequantize(qt, rows=torch.zeros(2, dtype=torch.float32, device=DEV))
    with pytest.raises(ValueError, match="dtype"):
        dq.dequantize(qt, dtype=torch.int8)
    with pytest.raises(ValueError, match="out"):
        dq.dequantize(qt, out=torch.empty(2, 255, device=DEV))


@pytest.mark.slow  # gguf's reader parses the whole vocabulary first (~5-50 s on 2 cores)
@pytest.mark.parametrize("model,types", [("smollm2-135m", {"Q4_1", "Q8_0"}),
                                         ("gemma3-270m", {"Q4_K", "Q6_K", "Q8_0"})])
def test_real_model_tensors(model_path, model, types):
    """The first rows of one matrix of every type in a real GGUF model."""
    from gguf import GGUFReader

    reader = GGUFReader(str(model_path(model)))
    seen = set()
    for t in reader.tensors:
        name = GGMLQuantizationType(t.tensor_type).name
        if len(t.shape) != 2 or name in seen or name not in ALL_TYPES:
            continue
        seen.add(name)
        cols = int(t.shape[0])
        rows = np.asarray(t.data).view(np.uint8).reshape(int(t.shape[1]), -1)
        raw = np.ascontiguousarray(rows[:6])
        qt = dq.repack(int(t.tensor_type), (6, cols), torch.from_numpy(raw.copy()).to(DEV))
        assert_bits_equal(dq.dequantize(qt), reference(name, raw, 6, cols))
    assert types <= seen, seen


@pytest.mark.gpu
def test_gather_beyond_int32_elements():
    """A Q8_0 weight of more than 2^31 elements (2.2 GB of int8 codes): rows at the end must come
    from the right place, so plane offsets (row * stride) have to be int64."""
    rows, cols = (1 << 17) + 48, 16384
    assert rows * cols > 2 ** 31
    g = torch.Generator(device=DEV).manual_seed(1)
    raw = torch.randint(0, 256, (rows, cols // 32, 34), dtype=torch.uint8, device=DEV, generator=g)
    d = (torch.rand((rows, cols // 32), device=DEV, generator=g) * 0.01 + 1e-3).to(torch.float16)
    raw[:, :, 0:2] = d.view(torch.uint8).reshape(rows, cols // 32, 2)
    raw = raw.reshape(rows, -1)
    qt = dq.repack(int(gguf_type("Q8_0")), (rows, cols), raw)
    idx = np.array([rows - 1, rows - 2, 131071, 131072, 5, rows - 48])
    got = dq.dequantize(qt, rows=torch.from_numpy(idx).to(DEV))
    want = reference("Q8_0", raw[torch.from_numpy(idx).to(DEV)].cpu().numpy(), len(idx), cols)
    assert_bits_equal(got, want)
