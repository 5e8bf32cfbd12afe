"""act_mul: gated activations, silu(gate) * up and gelu_tanh(gate) * up."""
from __future__ import annotations

import math

import numpy as np

KINDS = ("silu", "gelu_tanh")
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_GELU_C = np.float32(0.044715)


def act_mul(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """kind "silu": gate * sigmoid(gate) * up;
    kind "gelu_tanh": 0.5 * gate * (1 + tanh(sqrt(2/pi) * (gate + 0.044715 gate^3))) * up.
    gate, up: [T, F] -> float32 [T, F] (a new array)."""
    if gate.shape != up.shape:
        raise ValueError(f"up: expected shape {tuple(gate.shape)} (as gate), got {tuple(up.shape)}")
    if kind == "silu":
        # silu(g) = g / (1 + exp(-g)); exp overflows to inf for g < -88, giving -0.0, which is right.
        t = np.negative(gate, dtype=np.float32)
        with np.errstate(over="ignore"):
            np.exp(t, out=t)
        t += 1.0
        np.divide(gate, t, out=t)
        t *= up
        return t
    if kind == "gelu_tanh":
        t = np.multiply(gate, gate, dtype=np.float32)
        t *= _GELU_C
        t += 1.0
        t *= gate
        t *= _SQRT_2_OVER_PI
        np.tanh(t, out=t)
        t += 1.0
        t *= gate
        t *= 0.5
        t *= up
        return t
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
