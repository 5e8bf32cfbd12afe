"""embed (GPU backend) against a float64 reference: gguf-py's dequantization of the whole table
(llama.cpp's reference format code), then plain row indexing and scaling in NumPy."""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants  # noqa: E402

from forge.kernels import dequant  # noqa: E402
from forge.kernels.embedding import embed  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# where each block type keeps its fp16 scale fields (byte offsets inside a block)
SCALE_FIELDS = {"Q8_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2), "Q6_K": (208,)}
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def table_bytes(name: str, rows: int, cols: int, rng) -> np.ndarray:
    """GGUF bytes uint8 [rows, bytes_per_row]: quantized normal data where gguf-py can quantize,
    else random blocks whose fp16 scale fields are set to sane values."""
    t = GGMLQuantizationType[name]
    if name in ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_1"):
        data = rng.standard_normal((rows, cols)).astype(np.float32)
        if name == "F32":
            return data.view(np.uint8).reshape(rows, -1)
        return np.ascontiguousarray(quants.quantize(data, t)).view(np.uint8).reshape(rows, -1)
    block, tsize = GGML_QUANT_SIZES[t]
    nb = cols // block
    blk = rng.integers(0, 256, (rows, nb, tsize), dtype=np.uint8)
    for off in SCALE_FIELDS[name]:
        d = (np.exp2(rng.uniform(-12, -3, (rows, nb))) * rng.choice([-1, 1], (rows, nb))).astype(np.float16)
        blk[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, nb, 2)
    return blk.reshape(rows, -1)


def ref_table(name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if name == "F32":
        return raw.view(np.float32).reshape(rows, cols).astype(np.float64)
    t = GGMLQuantizationType[name]
    return quants.dequantize(raw, t).reshape(rows, cols).astype(np.float64)


@pytest.mark.parametrize("name", ["F32", "F16", "BF16", "Q8_0", "Q4_K", "Q6_K", "Q5_0", "Q4_1"])
def test_embed_types(rng, name):
    rows, cols = 37, 512
    raw = table_bytes(name, rows, cols, rng)
    t = int(GGMLQuantizationType[name])
    table = dequant.repack(t, (rows, cols), torch.from_numpy(raw).to(DEV))
    ids = rng.integers(0, rows, 7)
    ids[:2] = [rows - 1, 0]
    ids[3] = ids[4]  # a repeated id
    full = ref_table(name, raw, rows, cols)
    got = embed(table, torch.as_tensor(ids).to(DEV))
    assert got.dtype == torch.float32 and got.shape == (7, cols)
    np.testing.assert_array_equal(got.cpu().numpy().astype(np.float64), full[ids].astype(np.float32))
    scale = float(np.sqrt(cols))
    for dt in (torch.float32, torch.bfloat16):
        got = embed(table, torch.as_tensor(ids, dtype=torch.int32).to(DEV), scale=scale, dtype=dt)
        assert got.dtype == dt
        want = full[ids] * scale
        np.testing.assert_allclose(got.float().cpu().numpy(), want, rtol=TOL[dt],
                                   atol=TOL[dt] * np.abs(want).max() * 1e-3)


def test_embed_odd_shapes(rng):
    """rows not a multiple of anything, a single token, and an empty batch."""
    rows, cols = 5, 96
    raw = table_bytes("Q8_0", rows, cols, rng)
    table = dequant.repack(8, (rows, cols), torch.from_numpy(raw).to(DEV))
    full = ref_table("Q8_0", raw, rows, cols)
    got = embed(table, torch.tensor([3], device=DEV), scale=0.5)
    np.testing.assert_allclose(got.cpu().numpy(), full[[3]] * 0.5, rtol=1e-6)
    assert embed(table, torch.zeros(0, dtype=torch.int64, device=DEV)).shape == (0, cols)


def test_embed_bad_inputs(rng):
    raw = table_bytes("F16", 4, 32, rng)
    table = dequant.repack(1, (4, 32), torch.from_numpy(raw).to(DEV))
    with pytest.raises(ValueError, match="ids"):
        embed(table, torch.zeros(2, 2, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="ids"):
        embed(table, torch.zeros(2, device=DEV))
    with pytest.raises(ValueError, match="dtype"):
        embed(table, torch.zeros(2, dtype=torch.int64, device=DEV), dtype=torch.int32)
    with pytest.raises(ValueError, match="table"):
        from forge.runtime.backend import QTensor
        embed(QTensor(1, (4, 32), torch.zeros(4, 32), "raw"), torch.zeros(2, dtype=torch.int64, device=DEV))


def test_embed_real_model_rows(model_path, rng, model="smollm2-135m"):
    """Rows of a real token_embd table (Q8_0; their GGUF bytes, repacked), against gguf-py.
    (Gemma 3's table is Q8_0 too; parsing its 262k-entry vocabulary takes ~30 s on a CPU.)"""
    from gguf import GGUFReader

    reader = GGUFReader(str(model_path(model)))
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    cols, rows = (int(x) for x in t.shape[:2])
    raw = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
    pick = np.concatenate([[0, rows - 1], rng.integers(0, rows, 6)])
    sub = np.array(raw[pick])             # repack only these rows: the whole table is slow on a CPU
    want = quants.dequantize(sub, t.tensor_type).reshape(len(pick), cols).astype(np.float64)
    table = dequant.repack(int(t.tensor_type), (len(pick), cols), torch.from_numpy(sub).to(DEV))
    ids = rng.permutation(len(pick))
    got = embed(table, torch.as_tensor(ids).to(DEV), scale=float(np.sqrt(cols)))
    np.testing.assert_allclose(got.cpu().numpy(), want[ids] * np.sqrt(cols), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_embed_llama3_shape_gpu(rng):
    rows, cols = 128256, 4096
    raw = table_bytes("Q6_K", rows, cols, rng)
    table = dequant.repack(14, (rows, cols), torch.from_numpy(raw).to(DEV))
    ids = rng.integers(0, rows, 512)
    ids[0] = rows - 1
    got = embed(table, torch.as_tensor(ids).to(DEV), dtype=torch.bfloat16)
    want = ref_table("Q6_K", raw[ids], len(ids), cols)
    np.testing.assert_allclose(got.float().cpu().numpy(), want, rtol=8e-3, atol=1e-6)
