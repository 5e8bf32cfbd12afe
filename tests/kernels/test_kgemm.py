"""forge.kernels.kgemm (the small-T Q4_K / Q6_K GEMM on scaled integer codes) against a float64
reference: x @ W^T with W = gguf.quants.dequantize of fresh random blocks.

The operand is sc * q (Q4_K: minus (dmin / d) * m) rounded once to bf16 (at most 2^-9 relative,
what the general GEMM's bf16 weights cost), so the tolerance on ||out - ref|| / ||ref|| is that
of the other bf16 paths, 2e-2 (the output is bf16), and 1e-2 for float32 partial sums (split-K).
Shapes: N = 131 and 67 (no multiple of the 64-row tile), K = 3 or 5 super-blocks, T = 1, 5, 17,
33 (one, a partial and two row tiles). Runs under TRITON_INTERPRET=1 (the plain-Triton operands)
and on a GPU (both), where the PTX operands must also equal the plain ones bit for bit. (The two
kernels' outputs may still differ in the last bits: the compiler orders their dots differently.)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dequant import gguf_type, random_rows, reference  # noqa: E402

from forge.kernels import dequant as dq  # noqa: E402
from forge.kernels import kgemm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NVIDIA = torch.cuda.is_available() and torch.version.hip is None


def make(name, rows, cols, rng, zero_d=False):
    raw = random_rows(name, rows, cols, rng, "bytes", specials=False)
    if zero_d:   # every other Q4_K super-block with d = 0 (only the mins remain)
        per = dq.TYPES[int(gguf_type(name))].type_size
        blocks = raw.reshape(rows, cols // 256, per)
        blocks[:, ::2, 0:2] = 0
    qt = dq.repack(int(gguf_type(name)), (rows, cols), torch.from_numpy(raw).to(DEV))
    return qt, reference(name, raw, rows, cols).astype(np.float64)


def run(qt, x, cfg, asm, bias=None, out_dtype=torch.bfloat16):
    out = torch.empty((x.shape[0], qt.rows), dtype=out_dtype, device=DEV)
    return kgemm.linear(x, qt, bias, out, cfg, asm=asm)


def rel(got, want):
    g = got.float().cpu().numpy().astype(np.float64)
    assert np.all(np.isfinite(g))
    return float(np.linalg.norm(g - want) / np.linalg.norm(want))


@pytest.mark.parametrize("name", kgemm.KQ_TYPES)
@pytest.mark.parametrize("N,sbs", [(131, 3), (67, 5)])
def test_kq_matches_float64(name, N, sbs, rng):
    qt, w64 = make(name, N, 256 * sbs, rng)
    for T in (1, 5, 17, 33):
        x = torch.from_numpy(rng.standard_normal((T, w64.shape[1])).astype(np.float32)).to(
            torch.bfloat16)
        bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(torch.bfloat16)
        ref = x.double().numpy() @ w64.T + bias.double().numpy()
        cfg = kgemm.kq_default(qt.ggml_type, T, N, w64.shape[1])
        y = run(qt, x.to(DEV), cfg, asm=False, bias=bias.to(DEV))
        assert rel(y, ref) < 2e-2, (T, rel(y, ref))
        if NVIDIA:   # the PTX operands (bit for bit: test_kq_ptx_operands_are_the_plain_ones)
            y2 = run(qt, x.to(DEV), cfg, asm=True, bias=bias.to(DEV))
            assert rel(y2, ref) < 2e-2, (T, rel(y2, ref))


def test_q4k_zero_d_blocks(rng):
    """Super-blocks whose d is 0 keep their mins (the operand switches to -m, scaled by dmin)."""
    qt, w64 = make("Q4_K", 70, 256 * 4, rng, zero_d=True)
    x = torch.from_numpy(rng.standard_normal((9, w64.shape[1])).astype(np.float32)).to(
        torch.bfloat16)
    ref = x.double().numpy() @ w64.T
    cfg = kgemm.kq_default(qt.ggml_type, 9, 70, w64.shape[1])
    for asm in ((False, True) if NVIDIA else (False,)):
        assert rel(run(qt, x.to(DEV), cfg, asm), ref) < 2e-2


@pytest.mark.parametrize("name", kgemm.KQ_TYPES)
def test_kq_split_k_and_float32_out(name, rng):
    qt, w64 = make(name, 75, 256 * 5, rng)
    x = torch.from_numpy(rng.standard_normal((6, w64.shape[1])).astype(np.float32)).to(
        torch.bfloat16)
    bias = torch.from_numpy(rng.standard_normal(75).astype(np.float32)).to(torch.bfloat16)
    ref = x.double().numpy() @ w64.T + bias.double().numpy()
    cfg = dict(kgemm.kq_default(qt.ggml_type, 6, 75, w64.shape[1]), SPLIT_K=3)
    y = run(qt, x.to(DEV), cfg, asm=None if NVIDIA else False, bias=bias.to(DEV),
            out_dtype=torch.float32)
    assert y.dtype == torch.float32 and rel(y, ref) < 1e-2


def test_kq_rejects_other_types_and_activations(rng):
    qt, _ = make("Q8_0", 8, 256, rng)
    x = torch.zeros((2, 256), dtype=torch.bfloat16, device=DEV)
    with pytest.raises(ValueError, match="Q8_0"):
        run(qt, x, kgemm.kq_default(qt.ggml_type, 2, 8, 256), asm=False)
    qk, _ = make("Q4_K", 8, 256, rng)
    with pytest.raises(ValueError, match="bfloat16"):
        run(qk, x.float(), kgemm.kq_default(qk.ggml_type, 2, 8, 256), asm=False)


@triton.jit
def _operand_kernel(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, op_ptr, scale_ptr, N, SB,
                    TYPE: tl.constexpr, ASM: tl.constexpr):
    rows = tl.arange(0, 64)
    rmask = rows < N
    qp = q_ptr.to(tl.pointer_type(tl.int32))
    if TYPE == 12:
        op, scale = kgemm._q4k_operand(qp, sc_ptr, d_ptr, rows, rmask, s_q, s_sc, s_d, SB, ASM)
    else:
        op, scale = kgemm._q6k_operand(qp, qh_ptr, sc_ptr, d_ptr, rows, rmask, s_q, s_qh, s_sc,
                                       s_d, SB, ASM)
    tl.store(op_ptr + rows[:, None] * 256 + tl.arange(0, 256)[None, :], op, mask=rmask[:, None])
    tl.store(scale_ptr + rows, scale, mask=rmask)


@pytest.mark.gpu
@pytest.mark.skipif(not NVIDIA, reason="PTX operands: NVIDIA only")
@pytest.mark.parametrize("name", kgemm.KQ_TYPES)
def test_kq_ptx_operands_are_the_plain_ones(name, rng):
    """The PTX pair builders (prmt / and / bf16x2 FMA on subnormal-coded codes) give the bits of
    the plain-Triton operands, and operand * scale is the gguf dequantization (to bf16 rounding
    of the operand: 2^-9 of the largest term), the second super-block, d = 0 blocks included."""
    qt, w64 = make(name, 61, 512, rng, zero_d=name == "Q4_K")
    got = []
    for asm in (False, True):
        op = torch.zeros(61, 256, dtype=torch.bfloat16, device=DEV)
        scale = torch.zeros(61, dtype=torch.float32, device=DEV)
        _operand_kernel[(1,)](*dq.plane_args(qt), op, scale, 61, 1, TYPE=qt.ggml_type, ASM=asm)
        got.append((op.view(torch.int16).cpu(), scale.cpu()))
    bad = (got[0][0] != got[1][0]).nonzero()
    assert len(bad) == 0, (len(bad), bad[:4].tolist(), got[0][0][tuple(bad[0])].item(),
                           got[1][0][tuple(bad[0])].item())
    assert torch.equal(got[0][1], got[1][1]), (got[0][1] - got[1][1]).abs().max()
    w = got[0][0].view(torch.bfloat16).double().numpy() * got[0][1].double().numpy()[:, None]
    want = w64[:, 256:]
    err = np.abs(w - want).max(axis=1) / np.maximum(np.abs(want).max(axis=1), 1e-30)
    assert float(err.max()) < 2 ** -6, float(err.max())
