"""rms_norm, optionally fused with the residual add."""
from __future__ import annotations

import numpy as np


def norm_input(x: np.ndarray, weight: np.ndarray, residual: np.ndarray | None):
    """Validate rms_norm's arguments; (h = x [+ residual] as float32 [N, D], D). Shared with
    forge.cpu.llamacpp.rms_norm."""
    if x.ndim != 2:
        raise ValueError(f"x: expected 2-D [N, D], got shape {tuple(x.shape)}")
    d = x.shape[1]
    if weight.shape != (d,):
        raise ValueError(f"weight: expected shape ({d},), got {tuple(weight.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual: expected shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        return np.add(x, residual, dtype=np.float32), d
    return (x if x.dtype == np.float32 else x.astype(np.float32)), d


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, residual: np.ndarray | None = None):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim; x [N, D], weight [D].

    With `residual` [N, D]: h = x + residual, returns (rms_norm(h) * weight, h).
    The sum of squares is accumulated in float64 (as ggml does); the output is float32.
    """
    h, d = norm_input(x, weight, residual)
    ss = np.einsum("ij,ij->i", h, h, dtype=np.float64)
    inv = (1.0 / np.sqrt(ss * (1.0 / d) + eps)).astype(np.float32)
    y = h * inv[:, None]
    y *= weight
    return y if residual is None else (y, h)
