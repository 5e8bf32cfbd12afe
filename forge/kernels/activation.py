"""Gated activations on the GPU (Triton): silu(gate) * up and gelu_tanh(gate) * up.

Both are written as gate * sigmoid(a * gate') so that one exp does the work and nothing overflows:
  silu(g)      = g / (1 + exp(-g))
  gelu_tanh(g) = 0.5 g (1 + tanh(z)) = g / (1 + exp(-2z)),  z = sqrt(2/pi) (g + 0.044715 g^3)
(exp overflows to inf for very negative arguments, giving -0.0, which is the right limit.)
Math is float32; the output takes gate's dtype. gate and up may be strided row views (e.g. the
two halves of a fused [T, 2F] gate_up output); `act_mul_fused` takes that [T, 2F] tensor directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from forge.kernels import pdl, tuning, xquant
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.kernels.xquant import _xq_store

KINDS = ("silu", "gelu_tanh")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def gated(g, u, GELU: tl.constexpr):
    """act(g) * u in float32 (g, u float32): silu, or gelu_tanh with GELU. Also the epilogue of
    the GEMV with ACT (matmul.py)."""
    if GELU:
        # exp(-2z), z = sqrt(2/pi) * (g + 0.044715 g^3); sqrt(2/pi) = 0.7978845608028654
        e = tl.exp(-2.0 * 0.7978845608028654 * (g + 0.044715 * g * g * g))
    else:
        e = tl.exp(-g)
    return g / (1.0 + e) * u


@triton.jit
def _act_mul_kernel(
    g_ptr,    # [T, F] gate rows strided by stride_g, features contiguous
    u_ptr,    # [T, F] up rows strided by stride_u, features contiguous
    o_ptr,    # [T, F] contiguous output
    xq_ptr,   # uint8: the output's int8 codes for the GEMV's X_PRE path (XQ_E > 0; xquant.py)
    xs_ptr,   # float32 [T, NCH]: their chunk scales
    F, stride_g, stride_u, stride_xq, NCH,    # (bytes per row of codes, chunks per row)
    GELU: tl.constexpr,
    BLOCK_F: tl.constexpr,
    PDL: tl.constexpr,   # launched with programmatic dependent launch (forge/kernels/pdl.py)
    XQ_V: tl.constexpr = 0,  # XQ_E > 0: also quantize the output in chunks of XQ_V x XQ_E
    XQ_E: tl.constexpr = 0,
):
    pdl_launch(PDL)
    pdl_wait(PDL)        # before the gate/up loads (the previous kernel's output)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    m = cols < F
    g = tl.load(g_ptr + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * stride_u + cols, mask=m, other=0.0).to(tl.float32)
    y = gated(g, u, GELU).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + row * F + cols, y, mask=m)
    if XQ_E > 0:   # the codes of the output as stored (masked columns are 0)
        r1 = tl.zeros((1,), tl.int64) + row
        _xq_store(tl.reshape(y.to(tl.float32), (1, BLOCK_F)), r1 >= 0,
                  tl.program_id(1) * (BLOCK_F // (XQ_V * XQ_E)), NCH, xq_ptr, xs_ptr,
                  r1 * stride_xq, r1 * NCH, XQ_V, XQ_E)


def _check(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name}: expected 2-D [T, F], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32/float16/bfloat16, got {x.dtype}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"{name}: features must be contiguous (stride 1), got strides {x.stride()}")


def _launch(gate: torch.Tensor, up: torch.Tensor, kind: str, xq=None) -> torch.Tensor:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    t, f = gate.shape
    out = torch.empty((t, f), dtype=gate.dtype, device=gate.device)
    if t == 0 or f == 0:
        return out
    default = {"BLOCK_F": min(2048, triton.next_power_of_2(f)), "num_warps": 4, "num_stages": 1}
    if default["BLOCK_F"] <= 256:
        default["num_warps"] = 1
    cfg = tuning.get_config("act_mul", tuning.bucket(F=f), default)
    xo = xquant.producer_args(out, xq, cfg["BLOCK_F"])
    grid = (t, triton.cdiv(f, cfg["BLOCK_F"]))
    _act_mul_kernel[grid](gate, up, out, *xo.ptrs, f, gate.stride(0), up.stride(0),
                          *xo.row_args, GELU=kind == "gelu_tanh", BLOCK_F=cfg["BLOCK_F"],
                          **xo.consts,
                          num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                          **pdl.launch_args())
    xo.record(out)
    return out


def act_mul(gate: torch.Tensor, up: torch.Tensor, kind: str, xq=None) -> torch.Tensor:
    """kind "silu": silu(gate) * up; "gelu_tanh": gelu_tanh(gate) * up. [T, F] each -> new [T, F]
    in gate's dtype. xq = (V, E): also quantize the output for the GEMV's X_PRE path when it
    is in the GEMV's range (see norm.rms_norm; xquant.producer_args)."""
    _check("gate", gate)
    _check("up", up)
    if tuple(up.shape) != tuple(gate.shape):
        raise ValueError(f"up: expected shape {tuple(gate.shape)} (as gate), got {tuple(up.shape)}")
    if up.device != gate.device:
        raise ValueError(f"up: must be on gate's device ({gate.device}), got {up.device}")
    return _launch(gate, up, kind, xq)


def act_mul_fused(gu: torch.Tensor, kind: str = "silu", xq=None) -> torch.Tensor:
    """gu [T, 2F] = [gate | up] (the output of concatenated gate/up weights) -> act(gate) * up [T, F]."""
    _check("gu", gu)
    if gu.shape[1] % 2:
        raise ValueError(f"gu: expected an even number of features [T, 2F], got {tuple(gu.shape)}")
    f = gu.shape[1] // 2
    return _launch(gu[:, :f], gu[:, f:], kind, xq)


def _spec(dtype: str, gelu: bool, block_f: int, num_warps: int, f: int,
          xq: tuple[int, int] = (0, 0)) -> dict:
    return {
        "name": f"act_mul_{'gelu_tanh' if gelu else 'silu'}_{dtype}_{block_f}"
                f"{f'_xq{xq[0]}x{xq[1]}' if xq[1] else ''}",
        "fn": _act_mul_kernel,
        "signature": {"g_ptr": f"*{dtype}", "u_ptr": f"*{dtype}", "o_ptr": f"*{dtype}",
                      "xq_ptr": "*u8", "xs_ptr": "*fp32",
                      "F": "i32", "stride_g": "i32", "stride_u": "i32", "stride_xq": "i32",
                      "NCH": "i32", "GELU": "constexpr", "BLOCK_F": "constexpr", "PDL": "constexpr",
                      "XQ_V": "constexpr", "XQ_E": "constexpr"},
        "constexprs": {"GELU": gelu, "BLOCK_F": block_f, "PDL": False, "XQ_V": xq[0],
                       "XQ_E": xq[1]},
        "num_warps": num_warps,
        "num_stages": 1,
        "bucket": tuning.bucket(F=f),
    }


COMPILE_SPECS: list[dict] = [
    _spec("bf16", False, 2048, 4, 14336),   # Llama-3-8B FFN
    _spec("fp16", False, 2048, 4, 18944),   # Qwen2-7B FFN
    _spec("fp32", False, 1024, 2, 1024),
    _spec("bf16", True, 2048, 4, 2048),     # Gemma 3 270M FFN
    _spec("fp32", True, 256, 1, 256),
    # with the output quantized for the GEMV's X_PRE path (NVIDIA decode)
    {**_spec("bf16", False, 2048, 4, 14336, (4, 8)), "vendors": ["nvidia"]},
    {**_spec("bf16", False, 2048, 4, 8192, (4, 4)), "vendors": ["nvidia"]},
]
COMPILE_SPECS.append(pdl.with_pdl(COMPILE_SPECS[5]))   # as Hopper launches it at decode
