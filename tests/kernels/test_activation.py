"""act_mul / act_mul_fused (Triton) against float64 NumPy references; runs under TRITON_INTERPRET=1."""
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels.activation import act_mul, act_mul_fused  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter evaluates both sides of tl.where in NumPy (exp overflow, -inf - -inf): noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
TOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def ref(g: np.ndarray, u: np.ndarray, kind: str) -> np.ndarray:
    g, u = g.astype(np.float64), u.astype(np.float64)
    if kind == "silu":
        return g / (1.0 + np.exp(-g)) * u
    return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3))) * u


def to_t(a, dtype):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device=DEV, dtype=dtype)


def as64(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


def check(got, want, dtype):
    g = as64(got)
    assert not np.isnan(g).any(), "NaN in output (unwritten elements?)"
    np.testing.assert_allclose(g, want, rtol=TOL[dtype], atol=TOL[dtype] * 1e-2)


def inputs(rng, t, f):
    g = rng.standard_normal((t, f)) * 4
    g.flat[:6] = [-120.0, -30.0, 0.0, 1e-4, 30.0, 95.0][: g.size]  # saturated and tiny arguments
    return g, rng.standard_normal((t, f))


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,f", [(7, 67), (1, 3000), (3, 1)])
def test_act_mul(rng, nan_empty, kind, dtype, t, f):
    g, u = inputs(rng, t, f)
    gt, ut = to_t(g, dtype), to_t(u, dtype)
    y = act_mul(gt, ut, kind)
    assert y.shape == (t, f) and y.dtype == dtype
    check(y, ref(as64(gt), as64(ut), kind), dtype)


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_act_mul_fused(rng, nan_empty, kind, dtype):
    t, f = 7, 67
    g, u = inputs(rng, t, f)
    gu = to_t(np.concatenate([g, u], axis=1), dtype)
    y = act_mul_fused(gu, kind)
    assert y.shape == (t, f)
    check(y, ref(as64(gu)[:, :f], as64(gu)[:, f:], kind), dtype)
    # the split halves (strided views) through act_mul give the same bits
    assert torch.equal(act_mul(gu[:, :f], gu[:, f:], kind), y)


def test_act_mul_bad_inputs():
    a = torch.zeros(3, 8, device=DEV)
    with pytest.raises(ValueError, match="kind"):
        act_mul(a, a, "relu")
    with pytest.raises(ValueError, match="up"):
        act_mul(a, torch.zeros(3, 9, device=DEV), "silu")
    with pytest.raises(ValueError, match="gate"):
        act_mul(torch.zeros(8, 3, device=DEV).t(), a, "silu")
    with pytest.raises(ValueError, match="gu"):
        act_mul_fused(torch.zeros(3, 7, device=DEV))
    with pytest.raises(ValueError, match="gate"):
        act_mul(a.long(), a, "silu")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_act_mul_big_gpu(rng, kind):
    t, f = 517, 14336
    g, u = inputs(rng, t, f)
    gu = to_t(np.concatenate([g, u], axis=1), torch.bfloat16)
    check(act_mul_fused(gu, kind), ref(as64(gu)[:, :f], as64(gu)[:, f:], kind), torch.bfloat16)


@pytest.mark.gpu
def test_act_mul_int64_offsets_gpu():
    """T * F > 2^31 elements: row offsets must be 64-bit."""
    t, f = (1 << 31) // 16384 + 3, 16384
    try:
        g = torch.full((t, f), 2.0, dtype=torch.bfloat16, device=DEV)
        u = torch.full((t, f), 3.0, dtype=torch.bfloat16, device=DEV)
    except RuntimeError:
        pytest.skip("not enough GPU memory")
    u[-1] = -1.0
    y = act_mul(g, u, "silu")
    s = 2.0 / (1.0 + math.exp(-2.0))
    assert torch.allclose(y[-1].float(), torch.full((f,), -s, device=DEV), rtol=1e-2)
    assert torch.allclose(y[-2].float(), torch.full((f,), 3 * s, device=DEV), rtol=1e-2)
