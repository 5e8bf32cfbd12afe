"""Producer-side quantization for the GEMV's X_PRE path (forge/kernels/xquant.py): rms_norm and
act_mul with xq=(V, E) store their output's int8 codes and chunk scales and record them, and
those equal what quantize_x computes from the output (bit-identical on the CPU), for rows that
end inside a chunk and inside a lane group, 1 and 2 rows, both chunkings. Outside the GEMV's
range nothing is recorded. Runs under TRITON_INTERPRET=1 on the CPU."""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels import activation, norm, xquant  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def rand(rng, shape, dtype=torch.bfloat16, scale=2.0):
    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32)).to(dtype).to(DEV)


def assert_recorded_equals_quantize_x(y: torch.Tensor, V: int, E: int) -> None:
    hit = xquant.lookup(y, V, E)
    assert hit is not None, "the producer recorded no quantization"
    xquant.forget()
    want = mm.quantize_x(y, V, E)                 # the quantize kernel, from y as stored
    nch = -(-y.shape[1] // (V * E))
    got_c, want_c = xquant.unpack(hit[0], V, E, nch), xquant.unpack(want[0], V, E, nch)
    np.testing.assert_array_equal(hit[1].cpu().numpy(), want[1].cpu().numpy())
    diff = np.abs(got_c.astype(np.int32) - want_c.astype(np.int32)).max()
    # (on a GPU the two kernels may fuse the product and the rounding differently)
    assert diff <= (0 if DEV == "cpu" else 1), f"codes differ by {diff}"
    assert hit[0].shape == want[0].shape and hit[1].shape == want[1].shape


@pytest.mark.parametrize("VE", [(4, 8), (4, 4)])
@pytest.mark.parametrize("T,D", [(1, 4096), (2, 100), (1, 2080), (2, 1024)])
def test_rms_norm_records_its_quantization(rng, VE, T, D):
    x, r = rand(rng, (T, D)), rand(rng, (T, D))
    w = rand(rng, (D,), torch.float32, 1.0)
    y = norm.rms_norm(x, w, 1e-5, xq=VE)
    assert_recorded_equals_quantize_x(y, *VE)
    y, h = norm.rms_norm(x, w, 1e-5, residual=r, xq=VE)
    assert_recorded_equals_quantize_x(y, *VE)
    # the norm itself is unchanged by the extra output
    np.testing.assert_array_equal(y.float().cpu().numpy(),
                                  norm.rms_norm(x, w, 1e-5, residual=r)[0].float().cpu().numpy())


@pytest.mark.parametrize("VE", [(4, 8), (4, 4)])
@pytest.mark.parametrize("T,F", [(1, 14336), (2, 96), (1, 2080)])
@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_act_mul_records_its_quantization(rng, VE, T, F, kind):
    gu = rand(rng, (T, 2 * F), torch.float16)
    out = activation.act_mul_fused(gu, kind, xq=VE)
    assert_recorded_equals_quantize_x(out, *VE)
    np.testing.assert_array_equal(out.float().cpu().numpy(),
                                  activation.act_mul_fused(gu, kind).float().cpu().numpy())


def test_nothing_recorded_outside_the_gemv_range(rng):
    """3+ rows (the GEMM reads x as it is), float32, per-head views, no xq: no record, and the
    kernels still compute the same outputs."""
    w = rand(rng, (256,), torch.float32, 1.0)
    cases = [rand(rng, (xquant.MAX_ROWS + 1, 256)), rand(rng, (1, 256), torch.float32),
             rand(rng, (1, 2, 128))]
    for x in cases:
        xquant.forget()
        wx = w[:x.shape[-1]].contiguous()
        y = norm.rms_norm(x, wx, 1e-5, xq=(4, 8))
        assert xquant.lookup(y, 4, 8) is None and not xquant._xq_last
        torch.testing.assert_close(y, norm.rms_norm(x, wx, 1e-5), rtol=0, atol=0)
    xquant.forget()
    out = activation.act_mul(rand(rng, (3, 64)), rand(rng, (3, 64)), "silu", xq=(4, 8))
    assert xquant.lookup(out, 4, 8) is None
    y = norm.rms_norm(rand(rng, (1, 256)), w, 1e-5)          # xq not asked for
    assert xquant.lookup(y, 4, 8) is None
    with pytest.raises(ValueError, match="xq"):
        norm.rms_norm(rand(rng, (1, 256)), w, 1e-5, xq=(4, 3))


def test_max_rows_is_the_gemv_range():
    assert xquant.MAX_ROWS == mm.MAX_BLOCK_T
