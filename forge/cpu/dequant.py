"""GGML weights on the CPU: hold them as float32 rows or as raw GGUF blocks, dequantize on demand.

Dequantization itself is gguf-py's (`gguf.quants.dequantize`), for every type it implements. We
only feed it bounded chunks: many rows at once (one call per ~1 MiB of output, which is several
times faster than gguf's own 16-row grouping) and never more than `MAX_CHUNK_BYTES` of float32.

Two layouts of `QTensor.data`:
- "f32": float32 `[rows, cols]` (dequantized once at load; an F32 tensor is a view of its bytes).
- "raw": uint8 `[rows, bytes_per_row]`, the GGUF blocks as stored (an mmap view is fine).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as _quants

from forge.runtime.backend import QTensor

CHUNK_ELEMS = 1 << 18           # float32 elements dequantized per gguf call (1 MiB)
MAX_CHUNK_BYTES = 64 << 20      # hard cap on the float32 temp of one chunk
POLICIES = ("f32", "raw")


@lru_cache(maxsize=None)
def _probe(ggml_type: int) -> GGMLQuantizationType:
    try:
        qt = GGMLQuantizationType(int(ggml_type))
    except ValueError:
        raise ValueError(f"ggml_type: unknown GGML type {ggml_type!r}") from None
    _, type_size = GGML_QUANT_SIZES[qt]
    try:
        _quants.dequantize(np.zeros((1, type_size), np.uint8), qt)
    except NotImplementedError:
        raise ValueError(f"ggml_type: the CPU backend cannot dequantize GGML type {qt.name}") from None
    return qt


def qtype(ggml_type: int) -> GGMLQuantizationType:
    """The GGMLQuantizationType of `ggml_type`; ValueError naming it if unknown or unsupported."""
    return _probe(int(ggml_type))


def is_supported(ggml_type: int) -> bool:
    try:
        qtype(ggml_type)
    except ValueError:
        return False
    return True


def row_bytes(ggml_type: int, cols: int) -> int:
    """Bytes of one row of `cols` values in GGUF layout."""
    block, type_size = GGML_QUANT_SIZES[qtype(ggml_type)]
    if cols % block:
        raise ValueError(f"shape: row length {cols} is not a multiple of the "
                         f"{qtype(ggml_type).name} block size {block}")
    return cols // block * type_size


def _as_rows(raw: np.ndarray, rows: int, bpr: int) -> np.ndarray:
    """raw (uint8 bytes, or typed f32/f16 rows) -> uint8 [rows, bpr], a view when possible."""
    b = np.asarray(raw)
    if b.nbytes != rows * bpr:
        raise ValueError(f"raw: expected {rows * bpr} bytes for {rows} rows of {bpr} bytes, got {b.nbytes}")
    if b.dtype != np.uint8:
        b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return b.reshape(rows, bpr)


def dequantize_bytes(raw_rows: np.ndarray, ggml_type: int, cols: int,
                     out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [n, bytes_per_row] GGUF rows -> float32 [n, cols], in bounded chunks."""
    qt = qtype(ggml_type)
    n = raw_rows.shape[0]
    if out is None:
        out = np.empty((n, cols), np.float32)
    if n == 0:
        return out
    if qt == GGMLQuantizationType.F32:
        out[...] = np.ascontiguousarray(raw_rows).view(np.float32).reshape(n, cols)
        return out
    if qt == GGMLQuantizationType.F16:
        out[...] = np.ascontiguousarray(raw_rows).view(np.float16).reshape(n, cols)
        return out
    step = max(1, min(CHUNK_ELEMS, MAX_CHUNK_BYTES // 4) // cols)
    for r0 in range(0, n, step):
        chunk = np.ascontiguousarray(raw_rows[r0:r0 + step])
        # Rows are whole blocks, so the chunk is one long row to gguf: one call, no regrouping.
        out[r0:r0 + chunk.shape[0]] = _quants.dequantize(chunk.reshape(1, -1), qt).reshape(chunk.shape[0], cols)
    return out


def load_qtensor(ggml_type: int, shape: tuple[int, int], raw: np.ndarray, *, policy: str = "f32") -> QTensor:
    """Wrap GGUF tensor bytes as a QTensor.

    policy "f32": dequantize now, data float32 [rows, cols] (an F32 tensor is viewed, not copied).
    policy "raw": keep the GGUF blocks, data uint8 [rows, bytes_per_row]; ops dequantize per call.
    F32 tensors are always held as "f32" (their raw bytes already are float32 rows).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    if len(tuple(shape)) != 2:
        raise ValueError(f"shape: expected (rows, cols), got {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape: expected positive (rows, cols), got {tuple(shape)}")
    qt = qtype(ggml_type)
    b = _as_rows(raw, rows, row_bytes(qt, cols))
    if qt == GGMLQuantizationType.F32:
        data = b.view(np.float32) if b.flags.c_contiguous else np.ascontiguousarray(b).view(np.float32)
        return QTensor(int(qt), (rows, cols), data.reshape(rows, cols), "f32")
    if policy == "raw":
        return QTensor(int(qt), (rows, cols), b, "raw")
    return QTensor(int(qt), (rows, cols), dequantize_bytes(b, qt, cols), "f32")


def dequantize(qt: QTensor, row_start: int = 0, row_end: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Rows [row_start, row_end) of `qt` as float32 [n, cols].

    For the "f32" layout this is a view of the stored rows (do not write to it) unless `out` is
    given; for "raw" it is a fresh array (or `out`).
    """
    rows = qt.rows
    row_end = rows if row_end is None else int(row_end)
    if not 0 <= row_start <= row_end <= rows:
        raise ValueError(f"row range [{row_start}, {row_end}) is outside 0..{rows}")
    if qt.layout == "f32":
        view = qt.data[row_start:row_end]
        if out is None:
            return view
        out[...] = view
        return out
    if qt.layout == "raw":
        return dequantize_bytes(qt.data[row_start:row_end], qt.ggml_type, qt.cols, out)
    raise ValueError(f"qt: unknown layout {qt.layout!r} for the CPU backend")


def dequantize_rows(qt: QTensor, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (int array, any order) of `qt` as a fresh float32 [len(idx), cols]."""
    if qt.layout == "f32":
        return np.take(qt.data, idx, axis=0)
    if qt.layout == "raw":
        return dequantize_bytes(np.take(qt.data, idx, axis=0), qt.ggml_type, qt.cols)
    raise ValueError(f"qt: unknown layout {qt.layout!r} for the CPU backend")


def chunk_rows(cols: int, budget_bytes: int = CHUNK_ELEMS * 4) -> int:
    """Rows per dequantization chunk for a row length of `cols` (at least 1)."""
    return max(1, min(budget_bytes, MAX_CHUNK_BYTES) // (4 * cols))
