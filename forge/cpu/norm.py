"""rms_norm, optionally fused with the residual add."""
from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, residual: np.ndarray | None = None):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim; x [N, D], weight [D].

    With `residual` [N, D]: h = x + residual, returns (rms_norm(h) * weight, h).
    The sum of squares is accumulated in float64 (as ggml does); the output is float32.
    """
    if x.ndim != 2:
        raise ValueError(f"x: expected 2-D [N, D], got shape {tuple(x.shape)}")
    d = x.shape[1]
    if weight.shape != (d,):
        raise ValueError(f"weight: expected shape ({d},), got {tuple(weight.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual: expected shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        h = np.add(x, residual, dtype=np.float32)
    else:
        h = x if x.dtype == np.float32 else x.astype(np.float32)
    ss = np.einsum("ij,ij->i", h, h, dtype=np.float64)
    inv = (1.0 / np.sqrt(ss * (1.0 / d) + eps)).astype(np.float32)
    y = h * inv[:, None]
    y *= weight
    return y if residual is None else (y, h)
