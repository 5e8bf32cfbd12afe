"""The GEMV's fused prologue and epilogues (matmul.linear with norm / act / residual) against a
float64 NumPy reference, and the composed path that runs where they cannot fuse.

y = [residual +] act?( rms_norm(x, nw, eps) @ W^T [+ bias] ), act(gate) * up over the two halves
of W's rows. The reference takes x as the kernel sees it (rounded to its dtype) and nothing
else rounded: the fused GEMV keeps the normed x and the gate / up sums in float32 registers.
Fresh random inputs; odd shapes (output columns not a multiple of any tile, rows ending inside a
chunk: masked tails) and whole steps (EVEN), 1, 2 and 3 token rows (two rows per program, the
third clamped off). Tolerance on ||out - ref|| / ||ref||: float32 out 1e-5; fp16 out 2e-3, bf16
1e-2 (one rounding of the output: at most 2^-11 / 2^-8 relative per element, 2^-7 where the CPU
interpreter truncates bf16); with int8 x, against x quantized as the kernel does. Where the ops
compose, the result must equal the ops called one after another.
Runs under TRITON_INTERPRET=1 on the CPU and natively on a GPU.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dequant import gguf_type  # noqa: E402
from test_matmul import DEV, KwargSpy, LaunchSpy, make_weight, quantized_x, rel_err  # noqa: E402

from forge.kernels import activation, norm  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def reference(x, w64, nw=None, eps=0.0, bias=None, act=None, residual=None,
              int8: tuple[int, int] | None = None) -> np.ndarray:
    """int8 = (V, E): x (times the norm weights, in float32) quantized per chunk as the GEMV's
    X_INT8 path does, the 1 / rms factor applied to the sums."""
    x64 = x.double().cpu().numpy()
    inv = 1.0
    if nw is not None:
        inv = 1.0 / np.sqrt(np.mean(x64 * x64, axis=1, keepdims=True) + eps)
        if int8 is None:
            x64 = x64 * inv * nw.double().cpu().numpy()
            inv = 1.0
        else:
            x64 = (x.float().cpu() * nw.float().cpu()).double().numpy()
    if int8 is not None:
        x64 = quantized_x(x64, *int8)
    y = (x64 @ w64.T) * inv
    if bias is not None:
        y = y + bias.double().cpu().numpy()
    if act is not None:
        f = y.shape[1] // 2
        g, u = y[:, :f], y[:, f:]
        if act == "silu":
            y = g / (1.0 + np.exp(-g)) * u
        else:
            y = 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3))) * u
    if residual is not None:
        y = y + residual.double().cpu().numpy()
    return y


def _inputs(w64, T, dtype, rng, fuse, with_bias=False):
    N, K = w64.shape
    n_out = N // 2 if "act" in fuse else N
    # products of a few units (random block scales can be large): silu / gelu in their curved
    # range, gate * up within fp16
    scale = 4.0 / float(np.median(np.linalg.norm(w64, axis=1)))
    xs = 3.0 if "norm" in fuse else scale
    x = torch.from_numpy((rng.standard_normal((T, K)) * xs).astype(np.float32)).to(dtype).to(DEV)
    kw, ref_kw = {}, {}
    if "norm" in fuse:
        nw = torch.from_numpy((rng.uniform(0.5, 1.5, K) * scale).astype(np.float32)).to(DEV)
        eps = 1e-5
        kw["norm"] = (nw, eps)
        ref_kw.update(nw=nw, eps=eps)
    if "act" in fuse:
        kw["act"] = ref_kw["act"] = fuse["act"]
    if "resid" in fuse:
        r = torch.from_numpy(rng.standard_normal((T, n_out)).astype(np.float32)).to(dtype)
        kw["residual"] = ref_kw["residual"] = r.to(DEV)
    bias = None
    if with_bias:
        bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(DEV)
        ref_kw["bias"] = bias
    return x, bias, kw, ref_kw


FUSIONS = [{"norm": 1}, {"act": "silu"}, {"act": "gelu_tanh"}, {"resid": 1},
           {"norm": 1, "act": "silu"}, {"norm": 1, "resid": 1},
           {"norm": 1, "act": "gelu_tanh", "resid": 1}]
# (type, K): floats with rows ending inside a chunk, block types with whole blocks
SHAPES = {"F32": 203, "F16": 203, "BF16": 203, "Q8_0": 32 * 7, "Q4_0": 32 * 7, "Q4_K": 256 * 3,
          "Q6_K": 256 * 3, "Q2_K": 256 * 3}


@pytest.mark.parametrize("name", list(SHAPES))
def test_fused_gemv_matches_float64(name, rng, tuning_table, monkeypatch):
    """Every fusion, one launch of the GEMV (no rms_norm / act_mul kernel), float x path (the one
    that fuses the norm on every vendor)."""
    spy = KwargSpy(mm._linear_gemv_kernel)
    monkeypatch.setattr(mm, "_linear_gemv_kernel", spy)
    counts = {k: LaunchSpy(getattr(m, k)) for m, k in ((norm, "_rms_norm_kernel"),
                                                       (activation, "_act_mul_kernel"))}
    monkeypatch.setattr(norm, "_rms_norm_kernel", counts["_rms_norm_kernel"])
    monkeypatch.setattr(activation, "_act_mul_kernel", counts["_act_mul_kernel"])
    # 74 rows = 37 (gate, up) pairs: odd column count either way; BLOCK_N 4 (2 pairs)
    qt, w64 = make_weight(name, 74, SHAPES[name], rng)
    tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "X_INT8": 0, "MAX_T": 4, "SPLIT_K": 1,
                                        "num_warps": 1}}})
    for i, fuse in enumerate(FUSIONS):
        T, dtype = [(1, torch.bfloat16), (2, torch.float32), (3, torch.float16)][i % 3]
        x, bias, kw, ref_kw = _inputs(w64, T, dtype, rng, fuse, with_bias=i % 2 == 1)
        n0 = len(spy.calls)
        y = mm.linear(x, qt, bias, **kw)
        assert len(spy.calls) == n0 + 1
        c = spy.calls[-1]
        assert (c["NORM"], c["RESID"], c["ACT"]) == (
            "norm" in fuse, "resid" in fuse, {None: 0, "silu": 1, "gelu_tanh": 2}[fuse.get("act")])
        assert y.dtype == dtype and tuple(y.shape) == (T, 37 if "act" in fuse else 74)
        err = rel_err(y, reference(x, w64, **ref_kw))
        assert err < TOL[dtype], f"{fuse} T={T} {dtype}: {err:.3e}"
    assert counts["_rms_norm_kernel"].launches == 0 and counts["_act_mul_kernel"].launches == 0


@pytest.mark.parametrize("name", ["F16", "Q4_K"])
def test_fused_gemv_prefetch(name, rng, tuning_table, monkeypatch):
    """The fusions with PREFETCH 1 and 2 (as sm90 ships F16's attn_output: residual added,
    PREFETCH 1): the result of PREFETCH 0 (bit for bit: only the load schedule differs) and
    within tolerance of the float64 reference; a masked tail and 3+ steps per row."""
    spy = KwargSpy(mm._linear_gemv_kernel)
    monkeypatch.setattr(mm, "_linear_gemv_kernel", spy)
    V, E = mm.gemv_shape(int(gguf_type(name)))
    qt, w64 = make_weight(name, 74, SHAPES[name], rng)
    bb = {"F16": 8, "Q4_K": 4}[name]
    assert -(-w64.shape[1] // (bb * V * E)) >= 3
    for fuse in ({"resid": 1}, {"norm": 1, "act": "silu"}, {"norm": 1, "resid": 1}):
        x, bias, kw, ref_kw = _inputs(w64, 1, torch.bfloat16, rng, fuse)
        got = {}
        for pf in (0, 1, 2):
            tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "BLOCK_K": bb * V * E, "X_INT8": 0,
                                                "MAX_T": 4, "SPLIT_K": 1, "PREFETCH": pf,
                                                "num_warps": 1}}})
            got[pf] = mm.linear(x, qt, **kw)
            c = spy.calls[-1]
            assert c["PREFETCH"] == pf and (c["NORM"], c["RESID"]) == ("norm" in fuse,
                                                                       "resid" in fuse)
            err = rel_err(got[pf], reference(x, w64, **ref_kw))
            assert err < TOL[torch.bfloat16], f"{fuse} PREFETCH {pf}: {err:.3e}"
            assert torch.equal(got[pf], got[0]), f"{fuse}: PREFETCH {pf} != 0"


@pytest.mark.parametrize("name", ["F16", "Q4_K"])
def test_fused_gemv_whole_steps_and_wide_programs(name, rng, tuning_table):
    """Rows of whole steps (EVEN: no masks), a program per 32 rows (16 pairs) and a single
    pair per program (BLOCK_N 1 in the table: raised to 2 for act)."""
    cols = {"F16": 256, "Q4_K": 1024}[name]
    V, E = mm.gemv_shape(int(gguf_type(name)))
    qt, w64 = make_weight(name, 2 * 45, cols, rng)
    for bn in (32, 1):
        tuning_table({"linear_gemv": {"*": {"BLOCK_N": bn, "BLOCK_K": 32 * V * E, "X_INT8": 0, "SPLIT_K": 1,
                                            "num_warps": 1}}})
        for T in (1, 2):
            fuse = {"norm": 1, "act": "silu", "resid": 1}
            x, bias, kw, ref_kw = _inputs(w64, T, torch.float32, rng, fuse)
            err = rel_err(mm.linear(x, qt, **kw), reference(x, w64, **ref_kw))
            assert err < 1e-5, f"BLOCK_N {bn} T={T}: {err:.3e}"


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K"])
def test_fused_gemv_int8_x(name, rng, tuning_table, monkeypatch):
    """X_INT8 (x quantized in the kernel, per chunk): the norm weights multiply x before the
    quantization (the 1 / rms factor is applied to the sums). With X_PRE (x quantized by its
    own kernel) the norm cannot fuse: rms_norm runs first, then the GEMV, then act_mul, whether
    or not xq asks for act_mul's codes (the same numbers either way); without act the GEMV
    still takes the residual."""
    spy = KwargSpy(mm._linear_gemv_kernel)
    monkeypatch.setattr(mm, "_linear_gemv_kernel", spy)
    acts = LaunchSpy(activation._act_mul_kernel)
    monkeypatch.setattr(activation, "_act_mul_kernel", acts)
    qt, w64 = make_weight(name, 74, SHAPES[name], rng)
    fuse = {"norm": 1, "act": "silu", "resid": 1}
    tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "X_INT8": 1, "SPLIT_K": 1, "num_warps": 1}}})
    x, bias, kw, ref_kw = _inputs(w64, 2, torch.bfloat16, rng, fuse)
    y = mm.linear(x, qt, **kw)
    assert spy.calls[-1]["NORM"] and spy.calls[-1]["X_INT8"]
    err = rel_err(y, reference(x, w64, **ref_kw, int8=mm.gemv_shape(qt.ggml_type)))
    assert err < TOL[torch.bfloat16], err          # x as quantized: bf16 rounding only
    tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "X_INT8": 1, "X_PRE": 1, "SPLIT_K": 1,
                                        "num_warps": 1}}})
    assert not mm.can_fuse(x, qt, norm=True) and mm.can_fuse(x, qt)
    nw, eps = kw["norm"]
    for xq in (None, mm.gemv_shape(qt.ggml_type)):
        y = mm.linear(x, qt, **kw, xq=xq)
        c = spy.calls[-1]
        assert not c.get("NORM") and c["X_PRE"] and not c.get("ACT") and not c.get("RESID")
        assert acts.launches == 1
        acts.launches = 0
        # exactly the three kernels one after another (each tested against float64 on its own)
        want = activation.act_mul_fused(mm.linear(norm.rms_norm(x, nw, eps, xq=xq), qt), "silu",
                                        xq=xq) + kw["residual"]
        assert torch.equal(y, want), xq
        acts.launches = 0
    # norm + residual: rms_norm, then the GEMV on its (quantized) output adds the residual;
    # residual alone: the GEMV on x quantized. Against the float64 product of x as quantized:
    # the bf16 output's rounding only.
    VE = mm.gemv_shape(qt.ggml_type)
    for fuse in ({"norm": 1, "resid": 1}, {"resid": 1}):
        x, bias, kw, ref_kw = _inputs(w64, 1, torch.bfloat16, rng, fuse)
        y = mm.linear(x, qt, **kw)
        c = spy.calls[-1]
        assert c["RESID"] and c["X_PRE"] and not c.get("NORM")
        xin = x if "norm" not in fuse else norm.rms_norm(x, *kw["norm"])
        err = rel_err(y, reference(xin, w64, residual=kw["residual"], int8=VE))
        assert err < TOL[torch.bfloat16], (fuse, err)


def test_fuse_norm_off_keeps_rms_norm(rng, tuning_table, monkeypatch):
    """FUSE_NORM 0 (a config key): rms_norm runs as its own kernel and the GEMV after it takes
    act and the residual."""
    spy = KwargSpy(mm._linear_gemv_kernel)
    monkeypatch.setattr(mm, "_linear_gemv_kernel", spy)
    norms = LaunchSpy(norm._rms_norm_kernel)
    monkeypatch.setattr(norm, "_rms_norm_kernel", norms)
    qt, w64 = make_weight("F16", 74, 203, rng)
    tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "X_INT8": 0, "SPLIT_K": 1, "FUSE_NORM": 0,
                                        "num_warps": 1}}})
    fuse = {"norm": 1, "act": "silu", "resid": 1}
    x, bias, kw, ref_kw = _inputs(w64, 1, torch.float32, rng, fuse, with_bias=True)
    err = rel_err(mm.linear(x, qt, bias, **kw), reference(x, w64, **ref_kw))
    c = spy.calls[-1]
    assert norms.launches == 1 and not c["NORM"] and c["ACT"] == 1 and c["RESID"]
    assert err < 1e-5, err


@pytest.mark.parametrize("case", ["many_tokens", "split_k"])
def test_unfusable_calls_compose(case, rng, tuning_table, monkeypatch):
    """Past the GEMV's token range, and with a split-K config, linear runs rms_norm, the product,
    act_mul and the residual add one after another: float32 within 1e-5 of float64, bf16 equal
    to those ops called one by one."""
    qt, w64 = make_weight("F16", 74, 203, rng)
    counts = {k: LaunchSpy(getattr(m, k)) for m, k in ((norm, "_rms_norm_kernel"),
                                                       (activation, "_act_mul_kernel"))}
    monkeypatch.setattr(norm, "_rms_norm_kernel", counts["_rms_norm_kernel"])
    monkeypatch.setattr(activation, "_act_mul_kernel", counts["_act_mul_kernel"])
    T = 5 if case == "many_tokens" else 1
    if case == "split_k":
        tuning_table({"linear_gemv": {"*": {"BLOCK_N": 4, "BLOCK_K": 64, "SPLIT_K": 2,
                                            "X_INT8": 0, "num_warps": 1}}})
    fuse = {"norm": 1, "act": "gelu_tanh", "resid": 1}
    for dtype in (torch.float32, torch.bfloat16):
        x, bias, kw, ref_kw = _inputs(w64, T, dtype, rng, fuse, with_bias=True)
        assert not mm.can_fuse(x, qt, norm=True)
        y = mm.linear(x, qt, bias, **kw)
        if dtype == torch.float32:
            err = rel_err(y, reference(x, w64, **ref_kw))
            assert err < 1e-5, f"{case} {dtype}: {err:.3e}"
        else:
            want = activation.act_mul_fused(
                mm.linear(norm.rms_norm(x, *kw["norm"]), qt, bias), "gelu_tanh") + kw["residual"]
            assert torch.equal(y, want), case
    assert counts["_rms_norm_kernel"].launches == 3 and counts["_act_mul_kernel"].launches == 3


def test_fused_linear_bad_input_raises(rng):
    qt, w64 = make_weight("F16", 74, 203, rng)
    odd, _ = make_weight("F16", 37, 203, rng)
    x = torch.zeros((1, 203), dtype=torch.bfloat16, device=DEV)
    nw = torch.ones(203, device=DEV)
    with pytest.raises(ValueError, match="act"):
        mm.linear(x, qt, act="relu")
    with pytest.raises(ValueError, match="even number of rows"):
        mm.linear(x, odd, act="silu")
    with pytest.raises(ValueError, match="norm"):
        mm.linear(x, qt, norm=(torch.ones(202, device=DEV), 1e-5))
    with pytest.raises(ValueError, match="norm"):
        mm.linear(x, qt, norm=nw)
    with pytest.raises(ValueError, match="eps"):
        mm.linear(x, qt, norm=(nw, -1.0))
    with pytest.raises(ValueError, match="residual"):
        mm.linear(x, qt, act="silu", residual=torch.zeros((1, 74), dtype=torch.bfloat16,
                                                          device=DEV))
    with pytest.raises(ValueError, match="residual"):
        mm.linear(x, qt, residual=torch.zeros((1, 74), dtype=torch.float32, device=DEV))
    with pytest.raises(ValueError, match="out"):
        mm.linear(x, qt, out=torch.empty((1, 74), device=DEV), norm=(nw, 1e-5))
