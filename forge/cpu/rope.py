"""rope: rotate Q and K, and write the rotated K and the raw V into the paged KV cache."""
from __future__ import annotations

import numpy as np

from forge.runtime.backend import RopeSpec

STYLES = ("norm", "neox")


def inv_freq(spec: RopeSpec) -> np.ndarray:
    """float64 [rot_dim/2]: freq_scale * base^(-2i/rot_dim) / freq_factors[i]."""
    half = spec.rot_dim // 2
    f = spec.freq_scale * np.power(float(spec.base), -2.0 * np.arange(half, dtype=np.float64) / spec.rot_dim)
    if spec.freq_factors is not None:
        ff = np.asarray(spec.freq_factors, dtype=np.float64).reshape(-1)
        if ff.shape != (half,):
            raise ValueError(f"spec.freq_factors: expected shape ({half},), got {ff.shape}")
        f = f / ff
    return f


def cos_sin(positions: np.ndarray, spec: RopeSpec) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos and sin [T, 1, rot_dim/2] of theta = pos * inv_freq (computed in float64)."""
    theta = np.multiply.outer(positions.astype(np.float64), inv_freq(spec))
    return np.cos(theta).astype(np.float32)[:, None, :], np.sin(theta).astype(np.float32)[:, None, :]


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rot: int, style: str) -> np.ndarray:
    """x [T, H, D] -> rotated copy (float32); features >= rot pass through."""
    out = np.empty(x.shape, np.float32)
    if rot < x.shape[-1]:
        out[..., rot:] = x[..., rot:]
    if style == "neox":
        half = rot // 2
        a, b = x[..., :half], x[..., half:rot]
        oa, ob = out[..., :half], out[..., half:rot]
    else:
        a, b = x[..., 0:rot:2], x[..., 1:rot:2]
        oa, ob = out[..., 0:rot:2], out[..., 1:rot:2]
    np.multiply(a, cos, out=oa)
    oa -= b * sin
    np.multiply(a, sin, out=ob)
    ob += b * cos
    return out


def _flat_cache(cache: np.ndarray, name: str, heads: int) -> np.ndarray:
    if cache.ndim != 4 or cache.shape[2] != heads:
        raise ValueError(f"{name}: expected [num_blocks, block_size, {heads}, dim], got {tuple(cache.shape)}")
    if not cache.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    return cache.reshape(cache.shape[0] * cache.shape[1], heads, cache.shape[3])


def write_kv(kc: np.ndarray, vc: np.ndarray, slots: np.ndarray, k_rot: np.ndarray,
             v3: np.ndarray) -> None:
    """Store token rows in the flattened caches kc/vc [slots, Hkv, D] at `slots`; slot -1 (a
    padding token) is skipped. Shared with forge.cpu.llamacpp.rope."""
    if not slots.size:
        return
    lo, hi = int(slots.min()), int(slots.max())
    if hi >= kc.shape[0]:
        raise ValueError(f"slot_mapping: slot {hi} is outside the cache ({kc.shape[0]} slots)")
    if lo < 0:
        keep = slots >= 0
        slots, k_rot, v3 = slots[keep], k_rot[keep], v3[keep]
    kc[slots] = k_rot
    vc[slots] = v3


def rope(q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, k_cache: np.ndarray,
         v_cache: np.ndarray, slot_mapping: np.ndarray, spec: RopeSpec, num_heads: int,
         num_kv_heads: int, head_dim: int) -> np.ndarray:
    """Rotate q [T, H*Dh] and k [T, Hkv*Dh] at `positions` [T]; store rotated k and v
    [T, Hkv*Dv] (Dv = v_cache.shape[-1]) in the caches at `slot_mapping` [T] (slots < 0 are
    skipped). Returns the rotated q [T, H*Dh] (a new float32 array)."""
    t = q.shape[0]
    if q.shape != (t, num_heads * head_dim):
        raise ValueError(f"q: expected shape ({t}, {num_heads * head_dim}), got {tuple(q.shape)}")
    if k.shape != (t, num_kv_heads * head_dim):
        raise ValueError(f"k: expected shape ({t}, {num_kv_heads * head_dim}), got {tuple(k.shape)}")
    if spec.style not in STYLES:
        raise ValueError(f"spec.style: expected one of {STYLES}, got {spec.style!r}")
    rot = int(spec.rot_dim)
    if rot <= 0 or rot % 2 or rot > head_dim:
        raise ValueError(f"spec.rot_dim: expected an even number in [2, {head_dim}], got {spec.rot_dim}")
    kc = _flat_cache(k_cache, "k_cache", num_kv_heads)
    vc = _flat_cache(v_cache, "v_cache", num_kv_heads)
    if kc.shape[2] != head_dim:
        raise ValueError(f"k_cache: head dim {kc.shape[2]} != head_dim {head_dim}")
    dv = vc.shape[2]
    if v.shape != (t, num_kv_heads * dv):
        raise ValueError(f"v: expected shape ({t}, {num_kv_heads * dv}), got {tuple(v.shape)}")
    positions = np.asarray(positions)
    slots = np.asarray(slot_mapping)
    if positions.shape != (t,):
        raise ValueError(f"positions: expected shape ({t},), got {positions.shape}")
    if slots.shape != (t,):
        raise ValueError(f"slot_mapping: expected shape ({t},), got {slots.shape}")

    cos, sin = cos_sin(positions, spec)
    q_out = _rotate(q.reshape(t, num_heads, head_dim), cos, sin, rot, spec.style)
    k_rot = _rotate(k.reshape(t, num_kv_heads, head_dim), cos, sin, rot, spec.style)
    v3 = v.reshape(t, num_kv_heads, dv)
    write_kv(kc, vc, slots, k_rot, v3)
    return q_out.reshape(t, num_heads * head_dim)
