"""rms_norm (Triton) against a float64 NumPy reference; runs under TRITON_INTERPRET=1 on the CPU."""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels.norm import rms_norm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def ref_rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    ms = (x * x).mean(axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w.astype(np.float64)


def to_t(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device=DEV, dtype=dtype)


def as64(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def check(got: torch.Tensor, want: np.ndarray, dtype) -> None:
    rtol, atol = TOL[dtype]
    g = as64(got)
    assert not np.isnan(g).any(), "output has NaN (unwritten elements?)"
    np.testing.assert_allclose(g, want, rtol=rtol, atol=atol * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d", [(7, 67), (3, 576), (2, 640), (1, 4096), (5, 1)])
def test_rms_norm(rng, nan_empty, dtype, n, d):
    x = rng.standard_normal((n, d)) * 3 + 0.5
    w = rng.standard_normal(d)
    xt, wt = to_t(x, dtype), to_t(w, torch.float32)
    y = rms_norm(xt, wt, 1e-6)
    assert y.dtype == dtype and y.shape == (n, d)
    check(y, ref_rms_norm(as64(xt), as64(wt), 1e-6), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(7, 67), (4, 640)])
def test_rms_norm_residual(rng, nan_empty, dtype, n, d):
    x = rng.standard_normal((n, d))
    r = rng.standard_normal((n, d)) * 4
    w = rng.standard_normal(d)
    xt, rt = to_t(x, dtype), to_t(r, dtype)
    wt = to_t(w, dtype)  # weight in the activation dtype also works
    y, h = rms_norm(xt, wt, 1e-5, residual=rt)
    assert y.dtype == dtype and h.dtype == dtype
    h_ref = as64(xt) + as64(rt)
    check(h, h_ref, dtype)
    # y is the norm of the h that was written (rounded to dtype): fused == add, then norm
    check(y, ref_rms_norm(as64(h), as64(wt), 1e-5), dtype)
    assert torch.equal(rms_norm(h, wt, 1e-5), y)


def test_rms_norm_wide_rows_loop(rng, nan_empty, monkeypatch):
    """Rows wider than one block take the chunked two-pass path."""
    import forge.kernels.norm as norm

    monkeypatch.setattr(norm, "MAX_SINGLE_BLOCK", 64)
    n, d = 3, 333
    x, r, w = rng.standard_normal((n, d)), rng.standard_normal((n, d)), rng.standard_normal(d)
    xt, rt, wt = to_t(x, torch.float32), to_t(r, torch.float32), to_t(w, torch.float32)
    y = norm.rms_norm(xt, wt, 1e-6)
    check(y, ref_rms_norm(x, w, 1e-6), torch.float32)
    y2, h2 = norm.rms_norm(xt, wt, 1e-6, residual=rt)
    check(h2, x + r, torch.float32)
    check(y2, ref_rms_norm(x + r, w, 1e-6), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_strided_view(rng, nan_empty, dtype):
    """Per-head norm on q sliced out of a fused qkv output, viewed [T, H, Dh] with no copy."""
    t, h, hkv, dh = 7, 6, 2, 40
    qkv = to_t(rng.standard_normal((t, (h + 2 * hkv) * dh)), dtype)
    q = qkv[:, : h * dh].unflatten(1, (h, dh))
    assert q.data_ptr() == qkv.data_ptr() and not q.is_contiguous()
    w = rng.standard_normal(dh)
    wt = to_t(w, torch.float32)
    y = rms_norm(q, wt, 1e-6)
    assert y.shape == (t, h, dh)
    want = ref_rms_norm(as64(qkv)[:, : h * dh].reshape(t * h, dh), w, 1e-6).reshape(t, h, dh)
    check(y, want, dtype)
    # the contiguous [T*H, Dh] view gives the same answer
    y2 = rms_norm(q.contiguous().view(t * h, dh), wt, 1e-6)
    assert torch.equal(y2.view(t, h, dh), y)


def test_rms_norm_row_stride(rng, nan_empty):
    """A 2-D x whose rows are spaced out (a column slice) is read in place."""
    big = to_t(rng.standard_normal((5, 100)), torch.float32)
    x = big[:, 10:77]
    w = rng.standard_normal(67)
    y = rms_norm(x, to_t(w, torch.float32), 1e-6)
    check(y, ref_rms_norm(as64(big)[:, 10:77], w, 1e-6), torch.float32)


def test_rms_norm_bad_inputs():
    x = torch.zeros(3, 8, device=DEV)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(7, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, torch.ones(8, device=DEV), 1e-6, residual=torch.zeros(3, 9, device=DEV))
    with pytest.raises(ValueError, match="x"):
        rms_norm(torch.zeros(8, device=DEV), torch.ones(8, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="x"):
        rms_norm(torch.zeros(3, 8, dtype=torch.int32, device=DEV), torch.ones(8, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="x"):
        rms_norm(torch.zeros(8, 3, device=DEV).t(), torch.ones(8, device=DEV), 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [4096, 5120, 16384 + 3])
def test_rms_norm_big_gpu(rng, d):
    n = 4099
    x = rng.standard_normal((n, d)).astype(np.float32)
    r = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    y, h = rms_norm(to_t(x, torch.bfloat16), to_t(w, torch.float32), 1e-6, residual=to_t(r, torch.bfloat16))
    check(y, ref_rms_norm(as64(h), w, 1e-6), torch.bfloat16)


@pytest.mark.gpu
def test_rms_norm_many_rows_int64_offsets():
    """Rows * D > 2^31: element offsets must be 64-bit."""
    n, d = (1 << 31) // 4096 + 5, 4096  # ~4.3 GB in bf16
    try:
        x = torch.ones(n, d, dtype=torch.bfloat16, device=DEV)
    except RuntimeError:
        pytest.skip("not enough GPU memory")
    x[-1].fill_(3.0)
    w = torch.full((d,), 2.0, device=DEV)
    y = rms_norm(x, w, 0.0)
    assert torch.all(y[-3:] == 2.0)
    assert torch.all(y[:3] == 2.0)
