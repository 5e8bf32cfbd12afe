"""rope on the GPU, fused with the paged KV-cache write (Triton).

One program per (token, block of heads). Programs [0, NQB) rotate a block of q heads into the
new q; programs [NQB, NQB + NKB) rotate a block of k heads and store them, with the matching v
heads, into the caches at the token's slot.

Pair p < rot/2 is (a, b) = (x[2p], x[2p+1]) for "norm" and (x[p], x[p + rot/2]) for "neox";
it becomes (a cos - b sin, b cos + a sin) at angle theta_p. A program reads each element once:
the a's and the b's as two [heads, rot/2] tiles, the pass-through features [rot, D) as a third.
theta_p = pos * inv_freq[p] in float32, where inv_freq[p] = freq_scale * base^(-2p/rot) /
freq_factors[p] is evaluated in float64 and rounded once to float32: on the device with torch,
once per (rot, base, freq_scale, freq_factors) and kept (`_inv_freq`), so a program loads it
instead of evaluating a float64 exp2 and division (the dependent float64 chain made this
launch-sized kernel take ~5-6 us on H100). cos/sin of that float32 angle are evaluated in
float64 (argument reduction by pi/2 and short polynomials, once per feature per program) and
rounded to float32.

Slots < 0 (padding tokens) and slots past the end of the cache are not written. Cache element
offsets are int64: (slot // BS) * stride0 + (slot % BS) * stride1 + h * stride2 + d (the slot
itself is < 2^31, checked on the host from the cache shape, so the division is 32-bit).
q, k, v may be column slices of one fused qkv output (row stride free, features contiguous).
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from forge.kernels import pdl, precompile, tuning
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.runtime.backend import RopeSpec

STYLES = ("norm", "neox")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _sincos(theta):
    """(cos, sin) of a float32 angle, float32, nearly correctly rounded for any |theta| < 2^53.

    Reduced by pi/2 in float64 (two-part constant), then Taylor polynomials in float64 on
    |r| <= pi/4 (truncation < 1e-11). Avoids libdevice's sinf/cosf, whose large-argument
    path keeps a local-memory array (stack) on NVIDIA.
    """
    t = theta.to(tl.float64)
    k = tl.floor(t * 0.6366197723675814 + 0.5)                  # nearest multiple of pi/2
    r = (t - k * 1.5707963267948966) - k * 6.123233995736766e-17  # pi/2 = hi + lo
    r2 = r * r
    s = r * (1.0 + r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (
        1.0 / 362880 + r2 * (-1.0 / 39916800))))))
    c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (
        -1.0 / 3628800 + r2 * (1.0 / 479001600))))))
    q = k.to(tl.int64) & 3
    cos = tl.where(q == 0, c, tl.where(q == 1, -s, tl.where(q == 2, -c, s)))
    sin = tl.where(q == 0, s, tl.where(q == 1, c, tl.where(q == 2, -s, -c)))
    return cos.to(tl.float32), sin.to(tl.float32)


@triton.jit
def _rope_heads(src, dst, src_hs, dst_hs, heads, nheads, D, cs, sn,
                ROT: tl.constexpr, NEOX: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_P: tl.constexpr):
    """Rotate heads [BLOCK_H] of one token: src/dst point at the token's first head, heads are
    src_hs / dst_hs elements apart. Each element is read once: the pairs as two [H, ROT/2]
    tiles (the halves, neox) or one [H, ROT] tile split into even / odd features (norm), the
    pass-through tail as a third."""
    HALF: tl.constexpr = ROT // 2
    p = tl.arange(0, BLOCK_R)
    hm = heads < nheads
    h64 = heads.to(tl.int64)[:, None]
    c = cs[None, :]
    s = sn[None, :]
    ty = dst.dtype.element_ty
    if NEOX:
        m = hm[:, None] & (p < HALF)[None, :]
        a = tl.load(src + h64 * src_hs + p[None, :], mask=m, other=0.0).to(tl.float32)
        b = tl.load(src + h64 * src_hs + (p + HALF)[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(dst + h64 * dst_hs + p[None, :], (a * c - b * s).to(ty), mask=m)
        tl.store(dst + h64 * dst_hs + (p + HALF)[None, :], (b * c + a * s).to(ty), mask=m)
    else:
        # interleaved pairs: the rotated features read and written as whole contiguous rows
        # and split into even / odd lanes in registers (two stride-2 loads and stores per head
        # made the L2 take partial sectors: 27 us for an 8B 512-token step, a copy of its bytes
        # 3.3 us, H100)
        f = tl.arange(0, 2 * BLOCK_R)
        m2 = hm[:, None] & (f < ROT)[None, :]
        x = tl.load(src + h64 * src_hs + f[None, :], mask=m2, other=0.0).to(tl.float32)
        a, b = tl.split(tl.reshape(x, [x.shape[0], BLOCK_R, 2]))
        y = tl.reshape(tl.join(a * c - b * s, b * c + a * s), [x.shape[0], 2 * BLOCK_R])
        tl.store(dst + h64 * dst_hs + f[None, :], y.to(ty), mask=m2)
    if BLOCK_P > 0:  # features [ROT, D) pass through
        j = ROT + tl.arange(0, BLOCK_P)
        mp = hm[:, None] & (j < D)[None, :]
        x = tl.load(src + h64 * src_hs + j[None, :], mask=mp, other=0.0)
        tl.store(dst + h64 * dst_hs + j[None, :], x.to(ty), mask=mp)


@triton.jit
def _rope_kernel(
    q_ptr,        # [T, H*Dh] rows strided by stride_q, features contiguous
    k_ptr,        # [T, Hkv*Dh] rows strided by stride_k
    v_ptr,        # [T, Hkv*Dv] rows strided by stride_v
    pos_ptr,      # [T] int32/int64 positions
    slot_ptr,     # [T] int64 cache slots (block * BS + offset); < 0 = skip
    inv_ptr,      # [ROT/2] float32 inv_freq (see `_inv_freq`)
    qo_ptr,       # [T, H*Dh] contiguous rotated q (output)
    kc_ptr,       # [NB, BS, Hkv, Dh] K cache, strides kc_s0..kc_s2, last dim contiguous
    vc_ptr,       # [NB, BS, Hkv, Dv] V cache, strides vc_s0..vc_s2, last dim contiguous
    H, HKV, D, DV, BS, num_slots,
    stride_q, stride_k, stride_v,
    kc_s0, kc_s1, kc_s2, vc_s0, vc_s1, vc_s2,
    ROT: tl.constexpr, NEOX: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_DV: tl.constexpr,
    PDL: tl.constexpr,   # launched with programmatic dependent launch (forge/kernels/pdl.py)
    ko_ptr=None,         # KO: [T, Hkv*Dh] contiguous rotated k (output; every token, any slot)
    KO: tl.constexpr = False,
):
    HALF: tl.constexpr = ROT // 2
    pdl_launch(PDL)
    pdl_wait(PDL)        # before any load (q/k/v, positions, slots) and the cache writes
    t = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    nqb = tl.cdiv(H, BLOCK_H)
    pos_f = tl.load(pos_ptr + t).to(tl.float32)
    p = tl.arange(0, BLOCK_R)
    inv = tl.load(inv_ptr + p, mask=p < HALF, other=0.0)
    if hb < nqb:
        cs, sn = _sincos(pos_f * inv)
        heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        _rope_heads(q_ptr + t * stride_q, qo_ptr + t * H * D, D, D, heads, H, D, cs, sn,
                    ROT, NEOX, BLOCK_R, BLOCK_P)
    else:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        heads = (hb - nqb) * BLOCK_H + tl.arange(0, BLOCK_H)
        cs, sn = _sincos(pos_f * inv)
        if KO:  # the rotated rows for attention's whole-prompt path (attention.py, fresh=)
            _rope_heads(k_ptr + t * stride_k, ko_ptr + t * HKV * D, D, D, heads, HKV, D, cs, sn,
                        ROT, NEOX, BLOCK_R, BLOCK_P)
        if (slot >= 0) & (slot < num_slots):
            s32 = slot.to(tl.int32)           # num_slots < 2^31: 32-bit division (no 64-bit divide)
            blk = (s32 // BS).to(tl.int64)
            off = (s32 % BS).to(tl.int64)
            _rope_heads(k_ptr + t * stride_k, kc_ptr + blk * kc_s0 + off * kc_s1, D, kc_s2, heads,
                        HKV, D, cs, sn, ROT, NEOX, BLOCK_R, BLOCK_P)
            dv = tl.arange(0, BLOCK_DV)
            h64 = heads.to(tl.int64)[:, None]
            mv = (heads < HKV)[:, None] & (dv < DV)[None, :]
            vv = tl.load(v_ptr + t * stride_v + h64 * DV + dv[None, :], mask=mv)
            vdst = vc_ptr + blk * vc_s0 + off * vc_s1 + h64 * vc_s2 + dv[None, :]
            tl.store(vdst, vv.to(vc_ptr.dtype.element_ty), mask=mv)


_INV_FREQ: dict = {}


def _inv_freq(rot: int, base: float, scale: float, ff: torch.Tensor | None,
              device: torch.device) -> torch.Tensor:
    """inv_freq [rot/2] float32 on `device`: scale * base^(-2p/rot) / ff[p] in float64, rounded
    once. Computed on the device (no host sync, also for freq_factors) and kept per spec (a
    freq_factors tensor by identity: the entry holds a weak reference to it, so a new tensor at
    a freed one's address or id never hits a stale entry); a first use inside a CUDA-graph
    capture is computed into the graph and not kept (its memory belongs to the graph's pool)."""
    key = (rot, base, scale, device, None if ff is None else (id(ff), ff._version))
    got = _INV_FREQ.get(key)
    if got is not None and (ff is None or got[0]() is ff):
        return got[1]
    p = torch.arange(rot // 2, dtype=torch.float64, device=device)
    inv = torch.exp2(p * (-2.0 * math.log2(base) / rot)) * scale
    if ff is not None:
        inv = inv / ff.reshape(-1).to(torch.float64)
    inv = inv.to(torch.float32)
    if not precompile.stream_capturing(device):
        if len(_INV_FREQ) > 256:
            _INV_FREQ.clear()
        _INV_FREQ[key] = (weakref.ref(ff) if ff is not None else None, inv)
    return inv


def _check_rows(name: str, x: torch.Tensor, t: int, width: int) -> None:
    if x.ndim != 2 or tuple(x.shape) != (t, width):
        raise ValueError(f"{name}: expected shape ({t}, {width}), got {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32/float16/bfloat16, got {x.dtype}")
    if width > 1 and x.stride(1) != 1:
        raise ValueError(f"{name}: features must be contiguous (stride 1), got strides {x.stride()}")


def _check_cache(name: str, c: torch.Tensor, heads: int, dim: int | None) -> None:
    if c.ndim != 4 or c.shape[2] != heads or (dim is not None and c.shape[3] != dim):
        want = f"[num_blocks, block_size, {heads}, {dim if dim is not None else 'dim'}]"
        raise ValueError(f"{name}: expected {want}, got {tuple(c.shape)}")
    if c.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32/float16/bfloat16, got {c.dtype}")
    if c.shape[3] > 1 and c.stride(3) != 1:
        raise ValueError(f"{name}: the head dim must be contiguous (stride 1), got strides {c.stride()}")


def _pass_block(n: int) -> int:
    """Block over the pass-through features [rot, D): 0 when there are none."""
    return 0 if n <= 0 else triton.next_power_of_2(n)


def _default_config(h: int, hkv: int, d: int) -> dict:
    block_d = triton.next_power_of_2(d)
    block_h = max(1, min(triton.next_power_of_2(max(h, hkv)), 2048 // block_d))
    num_warps = 4 if block_h * block_d >= 1024 else 2 if block_h * block_d >= 256 else 1
    return {"BLOCK_H": block_h, "num_warps": num_warps, "num_stages": 1}


class Fused(NamedTuple):
    """What the decode attention kernel needs to do a layer's rope itself (`fused_args`)."""
    k: torch.Tensor             # [T, Hkv*Dh] this step's k rows (unrotated)
    v: torch.Tensor             # [T, Hkv*Dv]
    positions: torch.Tensor     # [T] int32 / int64
    slot_mapping: torch.Tensor  # [T] int64 / int32
    inv: torch.Tensor           # [rot/2] float32 inv_freq (`_inv_freq`)
    rot: int
    neox: bool
    num_slots: int              # cache slots (NB * BS): slots outside [0, num_slots) are skipped


def _check(q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec, num_heads: int,
           num_kv_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    """Every argument check of `rope` (ValueError naming the argument); returns (H, Hkv, Dh, rot)."""
    h, hkv, dh = int(num_heads), int(num_kv_heads), int(head_dim)
    if h <= 0 or hkv <= 0 or dh <= 0 or h % hkv:
        raise ValueError(f"num_heads/num_kv_heads/head_dim: bad values {h}/{hkv}/{dh}")
    t = q.shape[0] if q.ndim == 2 else -1
    _check_rows("q", q, t, h * dh)
    _check_rows("k", k, t, hkv * dh)
    _check_cache("k_cache", k_cache, hkv, dh)
    _check_cache("v_cache", v_cache, hkv, None)
    dv = v_cache.shape[3]
    _check_rows("v", v, t, hkv * dv)
    if tuple(k_cache.shape[:2]) != tuple(v_cache.shape[:2]):
        raise ValueError(f"v_cache: blocks {tuple(v_cache.shape[:2])} differ from k_cache's "
                         f"{tuple(k_cache.shape[:2])}")
    if positions.ndim != 1 or positions.shape[0] != t or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions: expected int32/int64 [{t}], got {positions.dtype} {tuple(positions.shape)}")
    if slot_mapping.ndim != 1 or slot_mapping.shape[0] != t or \
            slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"slot_mapping: expected int64 [{t}], got {slot_mapping.dtype} "
                         f"{tuple(slot_mapping.shape)}")
    if spec.style not in STYLES:
        raise ValueError(f"spec.style: expected one of {STYLES}, got {spec.style!r}")
    rot = int(spec.rot_dim)
    if rot <= 0 or rot % 2 or rot > dh:
        raise ValueError(f"spec.rot_dim: expected an even number in [2, {dh}], got {spec.rot_dim}")
    base = float(spec.base)
    if not base > 0.0 or math.isinf(base):
        raise ValueError(f"spec.base: must be a positive finite number, got {spec.base}")
    ff = spec.freq_factors
    if ff is not None:
        if not isinstance(ff, torch.Tensor) or ff.numel() != rot // 2 or not ff.is_floating_point():
            raise ValueError(f"spec.freq_factors: expected a float tensor of {rot // 2} values, got "
                             f"{getattr(ff, 'shape', type(ff))}")
        ff = ff.reshape(-1)
        if ff.stride(0) != 1 or ff.device != q.device:
            raise ValueError("spec.freq_factors: must be contiguous and on q's device")
    for name, x in (("k", k), ("v", v), ("positions", positions), ("k_cache", k_cache),
                    ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        if x.device != q.device:
            raise ValueError(f"{name}: must be on q's device ({q.device}), got {x.device}")
    nb, bs = k_cache.shape[0], k_cache.shape[1]
    if nb * bs >= 2 ** 31:
        raise ValueError(f"k_cache: {nb} x {bs} slots; at most 2^31 - 1 are supported")
    return h, hkv, dh, rot


def fused_args(q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec,
               num_heads: int, num_kv_heads: int, head_dim: int) -> Fused:
    """`rope`'s arguments checked, for the decode attention kernel to apply instead
    (attention.attention(..., rope=...)): the meaning is rope followed by attention."""
    _, _, _, rot = _check(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                          num_kv_heads, head_dim)
    # keyed by the spec's own tensor (a reshaped view is a new object on every call)
    inv = _inv_freq(rot, float(spec.base), float(spec.freq_scale), spec.freq_factors, q.device)
    return Fused(k, v, positions, slot_mapping, inv, rot, spec.style == "neox",
                 k_cache.shape[0] * k_cache.shape[1])


def rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, spec: RopeSpec,
         num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Rotate q [T, H*Dh] and k [T, Hkv*Dh] by `spec` at `positions` [T]; write the rotated k and
    v [T, Hkv*Dv] (Dv = v_cache.shape[-1]) into the caches at `slot_mapping` [T] (slots < 0 are
    skipped). Returns the rotated q as a new contiguous [T, H*Dh] tensor in q's dtype."""
    f = fused_args(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                   num_kv_heads, head_dim)
    return apply(q, f, k_cache, v_cache, num_heads, num_kv_heads, head_dim)


def apply(q: torch.Tensor, f: Fused, k_cache: torch.Tensor, v_cache: torch.Tensor,
          num_heads: int, num_kv_heads: int, head_dim: int,
          k_out: torch.Tensor | None = None) -> torch.Tensor:
    """`rope` on arguments `fused_args` has checked: the rope kernel's launch. k_out: a
    contiguous [T, Hkv*Dh] tensor of q's dtype that also receives the rotated k rows (every
    row, whatever its slot)."""
    h, hkv, dh = int(num_heads), int(num_kv_heads), int(head_dim)
    t = q.shape[0]
    dv = v_cache.shape[3]
    q_out = torch.empty((t, h * dh), dtype=q.dtype, device=q.device)
    if k_out is not None and (tuple(k_out.shape) != (t, hkv * dh) or not k_out.is_contiguous()
                              or k_out.dtype != q.dtype or k_out.device != q.device):
        raise ValueError(f"k_out: expected a contiguous {q.dtype} [{t}, {hkv * dh}] tensor on "
                         f"{q.device}, got {k_out.dtype} {tuple(k_out.shape)}")
    if t == 0:
        return q_out
    cfg = tuning.get_config("rope", tuning.bucket(H=h, D=dh), _default_config(h, hkv, dh))
    block_h = cfg["BLOCK_H"]
    grid = (t, triton.cdiv(h, block_h) + triton.cdiv(hkv, block_h))
    _rope_kernel[grid](
        q, f.k, f.v, f.positions, f.slot_mapping, f.inv, q_out, k_cache, v_cache,
        h, hkv, dh, dv, k_cache.shape[1], f.num_slots,
        q.stride(0), f.k.stride(0), f.v.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        ROT=f.rot, NEOX=f.neox, BLOCK_H=block_h,
        BLOCK_R=triton.next_power_of_2(f.rot // 2), BLOCK_P=_pass_block(dh - f.rot),
        BLOCK_DV=triton.next_power_of_2(dv),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch_args(),
        **({} if k_out is None else dict(ko_ptr=k_out, KO=True)),
    )
    return q_out


def _spec(name: str, act: str, cache: str, rot: int, neox: bool, block_h: int,
          d: int, dv: int, num_warps: int, h: int, ko: bool = False) -> dict:
    sig = {
        "q_ptr": f"*{act}", "k_ptr": f"*{act}", "v_ptr": f"*{act}", "pos_ptr": "*i32",
        "slot_ptr": "*i64", "inv_ptr": "*fp32", "qo_ptr": f"*{act}", "kc_ptr": f"*{cache}",
        "vc_ptr": f"*{cache}",
        "H": "i32", "HKV": "i32", "D": "i32", "DV": "i32", "BS": "i32", "num_slots": "i32",
        "stride_q": "i32", "stride_k": "i32", "stride_v": "i32",
        "kc_s0": "i64", "kc_s1": "i64", "kc_s2": "i64", "vc_s0": "i64", "vc_s1": "i64", "vc_s2": "i64",
        "ROT": "constexpr", "NEOX": "constexpr",
        "BLOCK_H": "constexpr", "BLOCK_R": "constexpr", "BLOCK_P": "constexpr",
        "BLOCK_DV": "constexpr", "PDL": "constexpr",
        "ko_ptr": f"*{act}" if ko else "constexpr", "KO": "constexpr",
    }
    return {"name": name, "fn": _rope_kernel, "signature": sig,
            "constexprs": {"ROT": rot, "NEOX": neox, "BLOCK_H": block_h,
                           "BLOCK_R": triton.next_power_of_2(rot // 2), "BLOCK_P": _pass_block(d - rot),
                           "BLOCK_DV": triton.next_power_of_2(dv), "PDL": False, "KO": ko,
                           **({} if ko else {"ko_ptr": None})},
            "num_warps": num_warps, "num_stages": 1, "bucket": tuning.bucket(H=h, D=d),
            # KO launches only for attention's fresh path, which is NVIDIA's (sm90+)
            **({"vendors": ["nvidia"]} if ko else {})}


COMPILE_SPECS: list[dict] = [
    #     name                            act     cache   rot  neox   BH   D    Dv  warps H
    _spec("rope_llama3_bf16_norm_ff", "bf16", "bf16", 128, False, 16, 128, 128, 4, 32),
    _spec("rope_qwen_fp16_neox", "fp16", "fp16", 128, True, 16, 128, 128, 4, 28),
    _spec("rope_gemma3_bf16_neox_d256", "bf16", "bf16", 256, True, 8, 256, 256, 4, 4),
    _spec("rope_partial_fp32_neox", "fp32", "fp32", 24, True, 32, 40, 40, 4, 6),
    _spec("rope_bf16_act_fp16_cache", "bf16", "fp16", 32, False, 16, 64, 128, 2, 16),
    # a whole prompt's prefill: the rotated k rows also written out (attention's fresh path)
    _spec("rope_llama3_bf16_norm_ko", "bf16", "bf16", 128, False, 16, 128, 128, 4, 32, ko=True),
    _spec("rope_gemma3_bf16_neox_d256_ko", "bf16", "bf16", 256, True, 8, 256, 256, 4, 4, ko=True),
]
COMPILE_SPECS += [pdl.with_pdl(s) for s in COMPILE_SPECS   # as Hopper launches them
                  if s["name"] in ("rope_llama3_bf16_norm_ff", "rope_llama3_bf16_norm_ko")]
