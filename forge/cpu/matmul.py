"""linear: y = x @ W^T (+ bias) through BLAS, for weights held as float32 rows or raw GGUF blocks."""
from __future__ import annotations

import numpy as np

from forge.cpu.dequant import chunk_rows, dequantize
from forge.runtime.backend import QTensor

# Rows of a raw weight dequantized per BLAS call. Bigger than dequant's chunk: the GEMM wants a
# reasonably wide N, and the temp (<= 4 MiB) still sits in L2/L3.
RAW_CHUNK_BYTES = 4 << 20


def linear(x: np.ndarray, w: QTensor, bias: np.ndarray | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """x [T, w.cols] float32 -> x @ W^T [T, w.rows] float32, plus bias [w.rows] if given."""
    if x.ndim != 2 or x.shape[1] != w.cols:
        raise ValueError(f"x: expected shape (T, {w.cols}), got {tuple(x.shape)}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    t = x.shape[0]
    if out is None:
        out = np.empty((t, w.rows), np.float32)
    elif out.shape != (t, w.rows) or out.dtype != np.float32:
        raise ValueError(f"out: expected float32 {(t, w.rows)}, got {out.dtype} {tuple(out.shape)}")
    if w.layout == "f32":
        if t == 1:  # one token: BLAS gemv on the 1-D row is ~15-20% faster than an M=1 gemm
            np.matmul(w.data, x[0], out=out[0])
        else:
            np.matmul(x, w.data.T, out=out)
    elif w.layout == "raw":
        step = chunk_rows(w.cols, RAW_CHUNK_BYTES)
        buf = np.empty((min(step, w.rows), w.cols), np.float32)
        for r0 in range(0, w.rows, step):
            r1 = min(r0 + step, w.rows)
            wc = dequantize(w, r0, r1, out=buf[: r1 - r0])
            if r0 == 0 and r1 == w.rows:
                np.matmul(x, wc.T, out=out)
            else:
                out[:, r0:r1] = x @ wc.T
    else:
        raise ValueError(f"w: unknown layout {w.layout!r} for the CPU backend")
    if bias is not None:
        if bias.shape != (w.rows,):
            raise ValueError(f"bias: expected shape ({w.rows},), got {tuple(bias.shape)}")
        out += bias
    return out
