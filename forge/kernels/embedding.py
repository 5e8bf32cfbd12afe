"""embed on the GPU: token ids -> rows of a repacked GGML table, dequantized on the fly.

The gather and the dequantization are forge/kernels/dequant.py's (`dequantize(table, rows=ids)`
reads only the rows asked for, from the "planar-v1" layout `dequant.repack` builds, for every GGML
type that file supports: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K). With a scale
(Gemma's sqrt(D)) the rows are dequantized to float32, scaled, and rounded once to `dtype`.

Ids are not range-checked on the device (that would need a host sync): the caller guarantees
0 <= id < table.rows, as the tokenizer and the engine do.
"""
from __future__ import annotations

import torch

from forge.kernels import dequant
from forge.runtime.backend import QTensor

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def embed(table: QTensor, ids: torch.Tensor, scale: float | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ids [T] (int32/int64, on the table's device) -> [T, table.cols] rows of the dequantized
    table, times `scale` if given, in `dtype` (float32 by default, like the CPU backend)."""
    dequant.check_qtensor("table", table)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids: expected a 1-D int32/int64 tensor, got "
                         f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
    dev = table.data["q"].device
    if ids.device != dev:
        raise ValueError(f"ids: on {ids.device}, the table is on {dev}")
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    if scale is None:
        return dequant.dequantize(table, rows=ids, dtype=dtype)
    scale = float(scale)
    rows = dequant.dequantize(table, rows=ids, dtype=torch.float32)
    rows.mul_(scale)
    return rows if dtype == torch.float32 else rows.to(dtype)


# No kernel of its own: the gather is dequant._dequant_kernel with GATHER=True, whose variants are
# in dequant.COMPILE_SPECS (listing them again would only compile them twice).
COMPILE_SPECS: list[dict] = []
