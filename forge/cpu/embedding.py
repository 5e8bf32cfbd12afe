"""embed: token ids -> rows of the embedding table (dequantizing only the rows asked for)."""
from __future__ import annotations

import numpy as np

from forge.cpu.dequant import dequantize_rows
from forge.runtime.backend import QTensor


def embed(table: QTensor, ids: np.ndarray, scale: float | None = None) -> np.ndarray:
    """ids [T] -> float32 [T, table.cols], times `scale` if given."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-D integer array, got {ids.dtype} {tuple(ids.shape)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= table.rows):
        raise ValueError(f"ids: token ids must lie in [0, {table.rows}), got min {int(ids.min())} "
                         f"max {int(ids.max())}")
    if table.layout == "raw" and ids.size > 1:
        uniq, inv = np.unique(ids, return_inverse=True)
        rows = dequantize_rows(table, uniq)
        out = rows if uniq.size == ids.size and np.array_equal(uniq, ids) else np.take(rows, inv, axis=0)
    else:
        out = dequantize_rows(table, ids)
    if scale is not None:
        out *= np.float32(scale)
    return out
