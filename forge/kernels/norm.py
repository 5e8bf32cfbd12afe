"""rms_norm on the GPU, optionally fused with the residual add (Triton).

y = h / sqrt(mean(h^2) + eps) * weight, h = x (or x + residual, written out once).

Rows are addressed in two levels so that a per-head norm (QK norm) runs on a strided view with
no copy: x may be [N, D], or [A, B, D] with any strides on A and B (e.g. q = qkv[:, :H*Dh]
viewed as [T, H, Dh]); the last dim must be contiguous. Row r lives at
(r // B) * stride_a + (r % B) * stride_b. Math is float32; y (and h) come out in x's dtype,
contiguous, shaped like x. With a residual, h is rounded to x's dtype first and y is the norm of
that rounded h, so the fused op equals add-then-norm done separately.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from forge.kernels import pdl, tuning, xquant
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.kernels.xquant import _xq_store

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SINGLE_BLOCK = 8192  # widest row held in registers at once; wider rows loop over chunks


@triton.jit
def _rms_norm_kernel(
    x_ptr,    # [A, B, D] (row r = (r // B, r % B)), last dim contiguous
    r_ptr,    # [A, B, D] residual, same row addressing (unused without HAS_RES)
    w_ptr,    # [D] contiguous, any float dtype
    y_ptr,    # [N, D] contiguous output, x's dtype
    h_ptr,    # [N, D] contiguous x + residual output (unused without HAS_RES)
    xq_ptr,   # uint8: y's int8 codes for the GEMV's X_PRE path (XQ_E > 0; xquant.py's layout)
    xs_ptr,   # float32 [N, NCH]: their chunk scales
    N, D, B,
    stride_xa, stride_xb, stride_ra, stride_rb,
    stride_xq, NCH,           # bytes per row of codes, chunks per row
    eps,
    HAS_RES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE: tl.constexpr,   # True: the whole row fits in BLOCK_D (one load, kept in registers)
    PDL: tl.constexpr,      # launched with programmatic dependent launch (forge/kernels/pdl.py)
    XQ_V: tl.constexpr = 0,  # XQ_E > 0 (SINGLE only): also quantize y in chunks of XQ_V x XQ_E
    XQ_E: tl.constexpr = 0,
):
    pdl_launch(PDL)
    pdl_wait(PDL)           # before any load: x / residual come from the previous kernel
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)        # N < 2^31: 32-bit row ids
    row_ok = rows < N
    ra = (rows // B).to(tl.int64)
    rb = (rows % B).to(tl.int64)
    x_row = ra * stride_xa + rb * stride_xb             # int64 element offsets
    r_row = ra * stride_ra + rb * stride_rb
    o_row = rows.to(tl.int64) * D
    cols = tl.arange(0, BLOCK_D)
    if SINGLE:
        cmask = cols < D
        m = row_ok[:, None] & cmask[None, :]
        h = tl.load(x_ptr + x_row[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_RES:
            h += tl.load(r_ptr + r_row[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
            h = h.to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + o_row[:, None] + cols[None, :], h, mask=m)
            h = h.to(tl.float32)
        ss = tl.sum(h * h, axis=1)
        rstd = 1.0 / tl.sqrt(ss / D + eps)
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        y = (h * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + o_row[:, None] + cols[None, :], y, mask=m)
        if XQ_E > 0:   # the codes of y as stored (masked columns are 0)
            _xq_store(y.to(tl.float32), row_ok, 0, NCH, xq_ptr, xs_ptr, rows.to(tl.int64) * stride_xq,
                      rows.to(tl.int64) * NCH, XQ_V, XQ_E)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for c0 in range(0, D, BLOCK_D):
            cc = c0 + cols
            m = row_ok[:, None] & (cc < D)[None, :]
            h = tl.load(x_ptr + x_row[:, None] + cc[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_RES:
                h += tl.load(r_ptr + r_row[:, None] + cc[None, :], mask=m, other=0.0).to(tl.float32)
                h = h.to(h_ptr.dtype.element_ty)
                tl.store(h_ptr + o_row[:, None] + cc[None, :], h, mask=m)
                h = h.to(tl.float32)
            acc += h * h
        ss = tl.sum(acc, axis=1)
        rstd = 1.0 / tl.sqrt(ss / D + eps)
        for c0 in range(0, D, BLOCK_D):
            cc = c0 + cols
            cmask = cc < D
            m = row_ok[:, None] & cmask[None, :]
            if HAS_RES:  # re-read the rounded h this program just wrote
                h = tl.load(h_ptr + o_row[:, None] + cc[None, :], mask=m, other=0.0).to(tl.float32)
            else:
                h = tl.load(x_ptr + x_row[:, None] + cc[None, :], mask=m, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + cc, mask=cmask, other=0.0).to(tl.float32)
            y = h * rstd[:, None] * w[None, :]
            tl.store(y_ptr + o_row[:, None] + cc[None, :], y.to(y_ptr.dtype.element_ty), mask=m)


def _rows_view(name: str, t: torch.Tensor) -> tuple[int, int, int, int]:
    """(A, B, stride_a, stride_b) of a [N, D] or [A, B, D] tensor whose last dim is contiguous."""
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32/float16/bfloat16, got {t.dtype}")
    if t.ndim == 2:
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name}: the last dim must be contiguous (stride 1), got strides {t.stride()}")
        return t.shape[0], 1, t.stride(0), 0
    if t.ndim == 3:
        if t.shape[2] > 1 and t.stride(2) != 1:
            raise ValueError(f"{name}: the last dim must be contiguous (stride 1), got strides {t.stride()}")
        return t.shape[0], t.shape[1], t.stride(0), t.stride(1)
    raise ValueError(f"{name}: expected [N, D] (or [A, B, D] for a per-head view), got shape {tuple(t.shape)}")


def _default_config(d: int) -> dict:
    block_d = min(triton.next_power_of_2(max(d, 1)), MAX_SINGLE_BLOCK)
    block_n = max(1, min(16, 2048 // block_d))
    num_warps = max(1, min(16, block_n * block_d // 512))  # ~16 elements per thread
    return {"BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": num_warps, "num_stages": 1}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             xq: tuple[int, int] | None = None):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim; x [N, D] (or [A, B, D]), weight [D].

    With `residual` (same shape as x): h = x + residual; returns (rms_norm(h) * weight, h).
    Outputs are new contiguous tensors in x's dtype, shaped like x.
    xq = (V, E): when y is [N, D] bf16/fp16 with N in the GEMV's range (xquant.MAX_ROWS) and
    its row fits one block, the kernel also quantizes y for the GEMV's X_PRE path with that
    chunking and records it (xquant.remember): a GEMV on y then launches no quantize kernel.
    """
    a, b, sxa, sxb = _rows_view("x", x)
    d = x.shape[-1]
    n = a * b
    if weight.ndim != 1 or weight.shape[0] != d:
        raise ValueError(f"weight: expected shape ({d},), got {tuple(weight.shape)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"weight: expected a float dtype, got {weight.dtype}")
    if weight.device != x.device or (d > 1 and weight.stride(0) != 1):
        raise ValueError("weight: must be contiguous and on x's device")
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps: must be >= 0, got {eps}")
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if residual is not None:
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"residual: expected shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.device != x.device:
            raise ValueError("residual: must be on x's device")
        _, _, sra, srb = _rows_view("residual", residual)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        sra = srb = 0
        h = y  # unused
    if n == 0 or d == 0:
        return y if residual is None else (y, h)
    cfg = tuning.get_config("rms_norm", tuning.bucket(D=d), _default_config(d))
    block_d = cfg["BLOCK_D"]
    single = block_d >= d
    xo = xquant.producer_args(y, xq if single else None, block_d)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    _rms_norm_kernel[grid](
        x, residual if residual is not None else x, weight, y, h, *xo.ptrs,
        n, d, b, sxa, sxb, sra, srb, *xo.row_args, eps,
        HAS_RES=residual is not None, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d, SINGLE=single,
        **xo.consts,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch_args(),
    )
    xo.record(y)
    return y if residual is None else (y, h)


def _spec(dtype: str, wdtype: str, has_res: bool, block_n: int, block_d: int, single: bool,
          num_warps: int, d: int, xq: tuple[int, int] = (0, 0)) -> dict:
    name = f"rms_norm_{dtype}_w{wdtype}_{'res' if has_res else 'nores'}_{block_n}x{block_d}" \
           f"{'' if single else '_loop'}{f'_xq{xq[0]}x{xq[1]}' if xq[1] else ''}"
    return {
        "name": name,
        "fn": _rms_norm_kernel,
        "signature": {
            "x_ptr": f"*{dtype}", "r_ptr": f"*{dtype}", "w_ptr": f"*{wdtype}", "y_ptr": f"*{dtype}",
            "h_ptr": f"*{dtype}", "xq_ptr": "*u8", "xs_ptr": "*fp32", "N": "i32", "D": "i32", "B": "i32",
            "stride_xa": "i64", "stride_xb": "i64", "stride_ra": "i64", "stride_rb": "i64",
            "stride_xq": "i32", "NCH": "i32", "eps": "fp32",
            "HAS_RES": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr", "SINGLE": "constexpr",
            "PDL": "constexpr", "XQ_V": "constexpr", "XQ_E": "constexpr",
        },
        "constexprs": {"HAS_RES": has_res, "BLOCK_N": block_n, "BLOCK_D": block_d, "SINGLE": single,
                       "PDL": False, "XQ_V": xq[0], "XQ_E": xq[1]},
        "num_warps": num_warps,
        "num_stages": 1,
        "bucket": tuning.bucket(D=d),  # what the launcher asks the tables for at this shape
    }


COMPILE_SPECS: list[dict] = [
    _spec("bf16", "fp32", True, 1, 4096, True, 8, 4096),       # Llama-3-8B hidden, fused residual
    _spec("fp16", "fp16", False, 1, 8192, True, 16, 5120),     # D = 5120 (Qwen/Mistral-Small)
    _spec("fp32", "fp32", False, 16, 128, True, 4, 128),       # QK norm, Dh = 128
    _spec("bf16", "fp32", False, 8, 256, True, 4, 256),        # QK norm, Dh = 256 (Gemma 3)
    _spec("bf16", "bf16", True, 1, 8192, False, 16, 16384),    # very wide rows: chunked loop
]


COMPILE_SPECS.append(pdl.with_pdl(COMPILE_SPECS[0]))
# with the output quantized for the GEMV's X_PRE path (NVIDIA decode: Q4_K/Q6_K and Q8_0 chunks)
COMPILE_SPECS.append(pdl.with_pdl(_spec("bf16", "fp32", True, 1, 4096, True, 8, 4096, (4, 8))))
COMPILE_SPECS.append(pdl.with_pdl(_spec("bf16", "fp32", False, 1, 2048, True, 4, 2048, (4, 4))))
