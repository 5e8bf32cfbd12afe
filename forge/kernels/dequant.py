"""GGML weights on the GPU: the load-time repack into planar arrays, and a Triton dequantize.

`repack(ggml_type, shape, raw)` turns the GGUF blocks of a weight (uint8 `[rows, bytes_per_row]`,
already on the target device) into a `QTensor` with layout `LAYOUT` whose `data` is a dict of
planes. Every plane is a 2-D tensor `[rows, padded_cols]` whose rows are padded to a multiple of
64 bytes, so that every row of every plane starts 16-byte aligned and its row stride, counted in
elements of any type the kernels view it as (bytes, int32 words), is a multiple of 16 (Triton's
JIT then knows the alignment and vectorizes). Element k of a row is described by (absent planes
are not stored):

  "q"   the main bits, in natural element order:
        F32/F16/BF16: the values themselves [rows, K]
        Q8_0: uint8 [rows, K] = the int8 code + 128 (unsigned, so that a byte decodes with one
              mask; the value is still d * (q - 128) = d * code)
        4-bit (Q4_0, Q4_1, Q5_*, Q4_K, Q5_K, Q6_K low bits): uint8 [rows, K/2], element 2i in
              the low nibble of byte i and element 2i+1 in the high nibble
        2-bit (Q2_K, Q3_K low bits): uint8 [rows, K/4], element 4i+j at bits 2j..2j+1 of byte i
  "qh"  the extra high bits, one little-endian int32 word per group of elements, with the bits
        in a "slot" order chosen so that the GEMV (matmul.py) moves them next to the low bits of
        their element with one shift per 4-byte word of low bits:
        1 bit (Q5_0, Q5_1, Q5_K): a word per 32 elements; element e = 8v + 2i + o (v = the
              32-bit word of the q plane it is in, i = 0..3, o = 0..1) at bit 8i + 2v + o
        1 bit (Q3_K): a word per 32 elements; element e = 16v + 2i + o (i = 0..7) at
              bit 4i + 2v + o
        2 bits (Q6_K): a word per 16 elements; element e = 8v + 2i + o (v = 0..1) at
              bits 8i + 2t .. 8i + 2t + 1, t = 2v + o
  "sc"  per-sub-block scale factors: Q4_K/Q5_K int16 [rows, K/32] = scale | min << 8 (the
        unpacked 6-bit values); Q3_K/Q6_K int8 [rows, K/16] (Q3_K already minus 32); Q2_K uint8
        [rows, K/16] (the GGUF byte: scale in the low nibble, min in the high one)
  "d"   block scales: fp16 d (Q8_0, Q4_0, Q5_0 one per 32 elements; Q3_K, Q6_K one per 256), or
        the fp16 pair packed in an int32 as bits(d) | bits(m) << 16 (Q4_1, Q5_1 one per 32:
        m the block min; Q2_K, Q4_K, Q5_K one per 256: m = dmin), one load for both.

Every type dequantizes sub-block by sub-block (SUB elements sharing one scale) as
    w = q * s + m   (Q4_1, Q5_1)       w = q * s - m   (Q2_K, Q4_K, Q5_K)       w = q * s   (else)
with q the integer code (offset applied: Q8_0 q-128, Q4_0 q-8, Q5_0 q-16, Q3_K q-4, Q6_K q-32),
s = d (legacy) or d * sc (K-quants) and m = the block min (legacy) or dmin * min (K-quants),
every product rounded to float32 exactly as gguf-py (and ggml) computes it, so that `dequantize`
(launched with fp contraction off) is bit-exact against `gguf.quants.dequantize`, signed zeros
included (gguf subtracts the min: x + (-m) would turn -0 - 0 into +0 where Triton negates as 0 - m).

Tiles here are [BLOCK_N rows, BLOCK_G groups, GE elements]: a group is GE consecutive elements
one thread decodes together (GE divides SUB; the dequantize and the GEMM use GE = SUB). The
GEMV in matmul.py reads the same planes with its own loader (whole words, 2^23 float trick).

The jit helpers `_load_tile`, `_decode_raw`, `_decode_tile`, `_apply_scale` and `_f16_pair` are
shared with forge/kernels/matmul.py.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from forge.kernels import pdl, tuning
from forge.kernels.pdl import pdl_launch, pdl_wait
from forge.runtime.backend import QTensor

LAYOUT = "planar-v2"
ROW_ALIGN = 64  # bytes: every plane row is padded to a multiple of this

# GGML type ids (gguf.GGMLQuantizationType), visible to jit code.
F32 = tl.constexpr(0)
F16 = tl.constexpr(1)
Q4_0 = tl.constexpr(2)
Q4_1 = tl.constexpr(3)
Q5_0 = tl.constexpr(6)
Q5_1 = tl.constexpr(7)
Q8_0 = tl.constexpr(8)
Q2_K = tl.constexpr(10)
Q3_K = tl.constexpr(11)
Q4_K = tl.constexpr(12)
Q5_K = tl.constexpr(13)
Q6_K = tl.constexpr(14)
BF16 = tl.constexpr(30)

QK_K = 256
PLANES = ("q", "qh", "sc", "d")


@dataclass(frozen=True, slots=True)
class TypeInfo:
    name: str
    block: int        # elements per GGUF block
    type_size: int    # bytes per GGUF block
    sub: int          # elements per sub-block (one scale)
    planes: dict      # plane name -> (torch dtype, K elements per plane element)


_U8, _I8, _I16, _I32, _H = torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16
TYPES: dict[int, TypeInfo] = {
    0: TypeInfo("F32", 1, 4, 4, {"q": (torch.float32, 1)}),
    1: TypeInfo("F16", 1, 2, 8, {"q": (_H, 1)}),
    30: TypeInfo("BF16", 1, 2, 8, {"q": (torch.bfloat16, 1)}),
    8: TypeInfo("Q8_0", 32, 34, 32, {"q": (_U8, 1), "d": (_H, 32)}),
    2: TypeInfo("Q4_0", 32, 18, 32, {"q": (_U8, 2), "d": (_H, 32)}),
    3: TypeInfo("Q4_1", 32, 20, 32, {"q": (_U8, 2), "d": (_I32, 32)}),
    6: TypeInfo("Q5_0", 32, 22, 32, {"q": (_U8, 2), "qh": (_I32, 32), "d": (_H, 32)}),
    7: TypeInfo("Q5_1", 32, 24, 32, {"q": (_U8, 2), "qh": (_I32, 32), "d": (_I32, 32)}),
    10: TypeInfo("Q2_K", 256, 84, 16, {"q": (_U8, 4), "sc": (_U8, 16), "d": (_I32, 256)}),
    11: TypeInfo("Q3_K", 256, 110, 16, {"q": (_U8, 4), "qh": (_I32, 32), "sc": (_I8, 16),
                                        "d": (_H, 256)}),
    12: TypeInfo("Q4_K", 256, 144, 32, {"q": (_U8, 2), "sc": (_I16, 32), "d": (_I32, 256)}),
    13: TypeInfo("Q5_K", 256, 176, 32, {"q": (_U8, 2), "qh": (_I32, 32), "sc": (_I16, 32),
                                        "d": (_I32, 256)}),
    14: TypeInfo("Q6_K", 256, 210, 16, {"q": (_U8, 2), "qh": (_I32, 16), "sc": (_I8, 16),
                                        "d": (_H, 256)}),
}
TYPE_IDS = {info.name: tid for tid, info in TYPES.items()}

# Triton pointer type strings of each plane dtype (COMPILE_SPECS).
TT_DTYPE = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
            torch.uint8: "*u8", torch.int8: "*i8", torch.int16: "*i16", torch.int32: "*i32"}


def type_info(ggml_type: int) -> TypeInfo:
    """The TypeInfo of a GGML type id; ValueError naming `ggml_type` if the GPU lacks the type."""
    try:
        return TYPES[int(ggml_type)]
    except (KeyError, TypeError, ValueError):
        names = ", ".join(t.name for t in TYPES.values())
        raise ValueError(f"ggml_type: GGML type {ggml_type!r} is not supported on the GPU "
                         f"(supported: {names})") from None


def row_bytes(ggml_type: int, cols: int) -> int:
    """Bytes of one GGUF row of `cols` elements of `ggml_type`."""
    info = type_info(ggml_type)
    if cols % info.block:
        raise ValueError(f"shape: row length {cols} is not a multiple of the {info.name} block "
                         f"size {info.block}")
    return cols // info.block * info.type_size


def _pad_row(n: int, itemsize: int) -> int:
    """n elements of `itemsize` bytes rounded up to a multiple of ROW_ALIGN bytes."""
    per = ROW_ALIGN // itemsize
    return (n + per - 1) // per * per


def plane_cols(ggml_type: int, name: str, cols: int) -> int:
    """Logical elements per row of plane `name` (before padding)."""
    _, per = type_info(ggml_type).planes[name]
    return cols // per


# ------------------------------------------------------------------------------------------------
# repack (torch, on the target device)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 little-endian -> [...] float16."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def _pack4(v: torch.Tensor) -> torch.Tensor:
    """uint8 values < 16 [..., 2n] -> [..., n]: element 2i low nibble, 2i+1 high nibble."""
    return v[..., 0::2] | (v[..., 1::2] << 4)


def _pack2(v: torch.Tensor) -> torch.Tensor:
    """uint8 values < 4 [..., 4n] -> [..., n]: element 4i+j at bits 2j."""
    return v[..., 0::4] | (v[..., 1::4] << 2) | (v[..., 2::4] << 4) | (v[..., 3::4] << 6)


def _bits(b: torch.Tensor, shifts: range, mask: int, dim: int) -> torch.Tensor:
    """Stack (b >> s) & mask for s in shifts along a new dim `dim`."""
    return torch.stack([(b >> s) & mask for s in shifts], dim=dim)


def _kquant_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K 12 packed bytes [..., 12] -> 6-bit scales, mins uint8 [..., 8] each."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([d & 63, (md & 15) | ((d >> 2) & 48)], dim=-1)
    mn = torch.cat([m & 63, (md >> 4) | ((m >> 2) & 48)], dim=-1)
    return sc, mn


def _pair16(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Two fields of 2 little-endian bytes each ([..., 2] uint8) -> int32 [...] = lo | hi << 16."""
    return torch.cat([lo, hi], dim=-1).contiguous().view(torch.int32).squeeze(-1)


# Bit positions of the high bits in a "qh" word (see the module doc), indexed by the element's
# place in the word's group: Q5_* 32 elements of 1 bit, Q3_K 32 of 1 bit, Q6_K 16 of 2 bits.
QH_POS_Q5 = tuple(8 * ((e % 8) // 2) + 2 * (e // 8) + e % 2 for e in range(32))
QH_POS_Q3 = tuple(4 * ((e % 16) // 2) + 2 * (e // 16) + e % 2 for e in range(32))
QH_POS_Q6 = tuple(8 * ((e % 8) // 2) + 2 * (2 * (e // 8) + e % 2) for e in range(16))


def _slot_words(vals: torch.Tensor, pos: tuple[int, ...]) -> torch.Tensor:
    """Small unsigned values [..., n] in natural element order -> int32 words [..., n / len(pos)]
    with element e of each group of len(pos) at bit pos[e] (little-endian)."""
    g = len(pos)
    v = vals.reshape(*vals.shape[:-1], vals.shape[-1] // g, g).to(torch.int64)
    shifts = torch.tensor(pos, dtype=torch.int64, device=vals.device)
    word = (v << shifts).sum(dim=-1)                       # < 2^32, no carries (disjoint bits)
    b = torch.stack([(word >> (8 * i)) & 255 for i in range(4)], dim=-1).to(torch.uint8)
    return b.view(torch.int32).squeeze(-1)


def _repack_blocks(tid: int, blk: torch.Tensor) -> dict[str, torch.Tensor]:
    """GGUF blocks uint8 [r, nb, type_size] -> planes [r, plane_cols] (unpadded)."""
    r, nb, _ = blk.shape
    out: dict[str, torch.Tensor] = {}

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(r, -1)

    if tid == 8:  # Q8_0: d(2) qs(32); codes stored + 128 (int8 bits with the sign bit flipped)
        out["d"] = _f16(blk[..., 0:2])
        out["q"] = flat(blk[..., 2:34] ^ 0x80)
    elif tid in (2, 3, 6, 7):  # Q4_0: d qs | Q4_1: d m qs | Q5_0: d qh qs | Q5_1: d m qh qs
        has_m = tid in (3, 7)
        o = 4 if has_m else 2
        out["d"] = _pair16(blk[..., 0:2], blk[..., 2:4]) if has_m else _f16(blk[..., 0:2])
        if tid in (6, 7):
            # 32 high bits as a little-endian uint32: bit j belongs to element j
            hbits = _bits(blk[..., o:o + 4], range(8), 1, dim=3)   # [r, nb, byte, bit]
            out["qh"] = flat(_slot_words(hbits.reshape(r, nb, 32), QH_POS_Q5))
            o += 4
        qs = blk[..., o:o + 16]  # byte j: element j (low nibble), element j + 16 (high)
        out["q"] = flat(_pack4(torch.cat([qs & 15, qs >> 4], dim=-1)))
    elif tid == 10:  # Q2_K: scales(16) qs(64) d dmin
        out["sc"] = flat(blk[..., 0:16])
        qs = blk[..., 16:80].reshape(r, nb, 2, 32)           # [h, l]
        vals = _bits(qs, range(0, 8, 2), 3, dim=3)          # [h, s, l]: element 128h + 32s + l
        out["q"] = flat(_pack2(vals.reshape(r, nb, QK_K)))
        out["d"] = _pair16(blk[..., 80:82], blk[..., 82:84])
    elif tid == 11:  # Q3_K: hmask(32) qs(64) scales(12) d
        hbits = _bits(blk[..., 0:32], range(8), 1, dim=2)    # [s, l]: element 32s + l
        out["qh"] = flat(_slot_words(hbits.reshape(r, nb, QK_K), QH_POS_Q3))
        qs = blk[..., 32:96].reshape(r, nb, 2, 32)
        vals = _bits(qs, range(0, 8, 2), 3, dim=3)
        out["q"] = flat(_pack2(vals.reshape(r, nb, QK_K)))
        s = blk[..., 96:108]
        # 16 6-bit scales: low 4 bits of scale i from byte i % 8 (nibble i // 8), high 2 bits
        # from byte 8 + i % 4 (bits 2 * (i // 4))
        lo = torch.stack([s[..., 0:8] & 15, s[..., 0:8] >> 4], dim=-2).reshape(r, nb, 16)
        hi = _bits(s[..., 8:12], range(0, 8, 2), 3, dim=-2).reshape(r, nb, 16)
        out["sc"] = flat(((lo | (hi << 4)).to(torch.int16) - 32).to(torch.int8))
        out["d"] = _f16(blk[..., 108:110])
    elif tid in (12, 13):  # Q4_K: d dmin scales(12) qs(128) | Q5_K: ... scales(12) qh(32) qs(128)
        out["d"] = _pair16(blk[..., 0:2], blk[..., 2:4])
        sc, mn = _kquant_scale_min(blk[..., 4:16])
        out["sc"] = flat(sc.to(torch.int16) | (mn.to(torch.int16) << 8))
        o = 16
        if tid == 13:
            hbits = _bits(blk[..., 16:48], range(8), 1, dim=2)  # [s, l]: element 32s + l
            out["qh"] = flat(_slot_words(hbits.reshape(r, nb, QK_K), QH_POS_Q5))
            o = 48
        qs = blk[..., o:o + 128].reshape(r, nb, 4, 32)       # [c, l]
        vals = _bits(qs, range(0, 8, 4), 15, dim=3)          # [c, hh, l]: element 64c + 32hh + l
        out["q"] = flat(_pack4(vals.reshape(r, nb, QK_K)))
    elif tid == 14:  # Q6_K: ql(128) qh(64) scales(16) d
        ql = blk[..., 0:128].reshape(r, nb, 2, 64)           # [h, l]
        lo = _bits(ql, range(0, 8, 4), 15, dim=3)            # [h, s, l]: element 128h + 64s + l
        out["q"] = flat(_pack4(lo.reshape(r, nb, QK_K)))
        qh = blk[..., 128:192].reshape(r, nb, 2, 32)
        hi = _bits(qh, range(0, 8, 2), 3, dim=3)             # [h, s, l]: element 128h + 32s + l
        out["qh"] = flat(_slot_words(hi.reshape(r, nb, QK_K), QH_POS_Q6))
        out["sc"] = flat(blk[..., 192:208]).view(torch.int8)
        out["d"] = _f16(blk[..., 208:210])
    else:  # pragma: no cover - guarded by type_info
        raise ValueError(f"ggml_type: no repack for {tid}")
    return out


REPACK_CHUNK_BYTES = 32 << 20  # raw bytes repacked per step (bounds the temporaries)


def repack(ggml_type: int, shape: tuple[int, int], raw: torch.Tensor) -> QTensor:
    """GGUF tensor bytes -> QTensor(layout=LAYOUT, data={plane: tensor}) on raw's device.

    raw: uint8 `[rows, bytes_per_row]` (any dtype whose bytes are the GGUF rows is accepted, e.g.
    typed float16 rows of an F16 tensor).
    """
    info = type_info(ggml_type)
    tid = int(ggml_type)
    if len(tuple(shape)) != 2:
        raise ValueError(f"shape: expected (rows, cols), got {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape: expected positive (rows, cols), got {tuple(shape)}")
    bpr = row_bytes(tid, cols)
    if not isinstance(raw, torch.Tensor):
        raise ValueError(f"raw: expected a torch.Tensor, got {type(raw).__name__}")
    nbytes = raw.numel() * raw.element_size()
    if nbytes != rows * bpr:
        raise ValueError(f"raw: expected {rows * bpr} bytes ({rows} rows of {bpr}), got {nbytes}")
    b = raw.contiguous().reshape(-1).view(torch.uint8).reshape(rows, bpr)
    dev = b.device
    planes: dict[str, torch.Tensor] = {}
    for name, (dt, _) in info.planes.items():
        pc = plane_cols(tid, name, cols)
        planes[name] = torch.zeros((rows, _pad_row(pc, dt.itemsize)), dtype=dt, device=dev)
    if info.block == 1:  # float types: reinterpret the bytes
        dt = info.planes["q"][0]
        planes["q"][:, :cols] = b.view(dt)
    else:
        nb = cols // info.block
        step = max(1, REPACK_CHUNK_BYTES // bpr)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            got = _repack_blocks(tid, b[r0:r1].reshape(r1 - r0, nb, info.type_size))
            for name, t in got.items():
                planes[name][r0:r1, : t.shape[1]] = t
    return QTensor(tid, (rows, cols), planes, LAYOUT)


def check_qtensor(name: str, w: QTensor) -> TypeInfo:
    """Validate a repacked weight; ValueError naming the argument."""
    if not isinstance(w, QTensor):
        raise ValueError(f"{name}: expected a QTensor, got {type(w).__name__}")
    if w.layout != LAYOUT or not isinstance(w.data, dict):
        raise ValueError(f"{name}: expected layout {LAYOUT!r} (from dequant.repack), "
                         f"got {w.layout!r}")
    info = type_info(w.ggml_type)
    rows, cols = w.shape
    for p in info.planes:
        t = w.data.get(p)
        if t is None or t.dim() != 2 or t.shape[0] != rows or t.stride(1) != 1 \
                or t.shape[1] < plane_cols(w.ggml_type, p, cols):
            raise ValueError(f"{name}: plane {p!r} is missing or has the wrong shape")
    return info


def plane_args(w: QTensor) -> list:
    """[q, qh, sc, d] tensors then their row strides, for a kernel launch; absent planes are
    replaced by the "q" plane with stride 0 (never read)."""
    q = w.data["q"]
    ptrs, strides = [], []
    for p in PLANES:
        t = w.data.get(p)
        ptrs.append(q if t is None else t)
        strides.append(0 if t is None else t.stride(0))
    return ptrs + strides


def plane_signature(ggml_type: int) -> dict:
    """Pointer type strings of the four plane arguments (absent planes take the "q" plane's)."""
    info = type_info(ggml_type)
    qdt = TT_DTYPE[info.planes["q"][0]]
    return {f"{p}_ptr": TT_DTYPE[info.planes[p][0]] if p in info.planes else qdt for p in PLANES}


# ------------------------------------------------------------------------------------------------
# jit helpers shared with matmul.py


@triton.jit
def _unpack4(b):
    """uint8 [R, G, C] -> [R, G, 2C]: byte i gives elements 2i (low nibble) and 2i+1 (high)."""
    return tl.reshape(tl.join(b & 15, b >> 4), (b.shape[0], b.shape[1], 2 * b.shape[2]))


@triton.jit
def _unpack2(b):
    """uint8 [R, G, C] -> [R, G, 4C]: element 4i+j from bits 2j..2j+1 of byte i."""
    # join appends the new axis last: [c, x, y] = element 4c + 2x + y = bits 2(2x + y)
    v = tl.join(tl.join(b & 3, (b >> 4) & 3), tl.join((b >> 2) & 3, b >> 6))
    return tl.reshape(v, (b.shape[0], b.shape[1], 4 * b.shape[2]))


@triton.jit
def _plane_offs(g3, BPG: tl.constexpr):
    """Byte offsets [1, BG, BPG] of BPG bytes per group along a row.

    With one byte per group the offsets along the group axis are contiguous, and Triton's
    coalescer would then give the load a layout vectorized across groups, unlike every other
    plane of the tile (one thread per group), forcing a shared-memory layout conversion per
    step; (2g) // 2 hides that contiguity from the axis analysis.
    """
    if BPG == 1:
        return (g3 * 2) // 2
    else:
        return g3 * BPG + tl.arange(0, BPG)[None, None, :]


@triton.jit
def _f16_pair(v):
    """int32 bits(lo) | bits(hi) << 16 -> (lo, hi) as float32."""
    lo = (v & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = ((v >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _load_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
               r64, rmask, g0, g_end, K,
               TYPE: tl.constexpr, SUB: tl.constexpr, GE: tl.constexpr, BLOCK_G: tl.constexpr):
    """Issue the loads of one weight tile; `_decode_raw` turns them into values.

    r64: [BN] int64 row ids, rmask [BN]; the tile covers groups g0 .. g0 + BLOCK_G - 1 of GE
    elements (groups >= g_end masked off); K: the row length (a float type's row may end inside
    a group). Returns (qr, hr, scr, dr): the low-bit plane as [BN, BG, bytes per group] tiles,
    the qh word of each group (Q3_K: already shifted to its half of the word) and the
    per-group scale fields as [BN, BG, 1], and the constant 0 for planes the type lacks (loads
    and decoding are separate steps so that a caller can prefetch the next tile).
    Group indices are built here from scalars, directly in each load's layout (a shared 1-D index
    tensor would cost a layout conversion per use). Masked-off entries read as 0.
    """
    tl.static_assert(SUB % GE == 0, "GE must divide SUB")
    R: tl.constexpr = SUB // GE                       # groups per sub-block
    r3 = r64[:, None, None]
    g3 = g0 + tl.arange(0, BLOCK_G)[None, :, None]    # [1, BG, 1]
    m3 = rmask[:, None, None] & (g3 < g_end)
    hr = 0
    scr = 0
    dr = 0
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        k = g3 * GE + tl.arange(0, GE)[None, None, :]
        qr = tl.load(q_ptr + r3 * s_q + k, mask=m3 & (k < K), other=0.0)
    elif TYPE == Q8_0:
        qr = tl.load(q_ptr + r3 * s_q + _plane_offs(g3, GE), mask=m3, other=0)
        dr = tl.load(d_ptr + r3 * s_d + g3 // R, mask=m3, other=0.0)
    elif TYPE == Q4_0 or TYPE == Q4_1 or TYPE == Q5_0 or TYPE == Q5_1:
        tl.static_assert(GE == 32, "Q4/Q5 tiles decode whole blocks")
        qr = tl.load(q_ptr + r3 * s_q + _plane_offs(g3, GE // 2), mask=m3, other=0)
        if TYPE == Q5_0 or TYPE == Q5_1:
            hr = tl.load(qh_ptr + r3 * s_qh + _plane_offs(g3, 1), mask=m3, other=0)
        dr = tl.load(d_ptr + r3 * s_d + g3 // R, mask=m3, other=0)
    elif TYPE == Q2_K or TYPE == Q3_K:  # SUB 16
        tl.static_assert(GE == 16, "Q2_K/Q3_K tiles decode whole sub-blocks")
        qr = tl.load(q_ptr + r3 * s_q + _plane_offs(g3, GE // 4), mask=m3, other=0)
        if TYPE == Q3_K:  # a word per 2 groups: group g has bits 2 (g % 2) + (0, 1) of each nibble
            hr = tl.load(qh_ptr + r3 * s_qh + g3 // 2, mask=m3, other=0) >> (2 * (g3 % 2))
        scr = tl.load(sc_ptr + r3 * s_sc + g3 // R, mask=m3, other=0)
        dr = tl.load(d_ptr + r3 * s_d + g3 // (16 * R), mask=m3, other=0)
    elif TYPE == Q4_K or TYPE == Q5_K:  # SUB 32
        tl.static_assert(GE == 32, "Q4_K/Q5_K tiles decode whole sub-blocks")
        qr = tl.load(q_ptr + r3 * s_q + _plane_offs(g3, GE // 2), mask=m3, other=0)
        if TYPE == Q5_K:
            hr = tl.load(qh_ptr + r3 * s_qh + _plane_offs(g3, 1), mask=m3, other=0)
        scr = tl.load(sc_ptr + r3 * s_sc + g3 // R, mask=m3, other=0)
        dr = tl.load(d_ptr + r3 * s_d + g3 // (8 * R), mask=m3, other=0)
    else:  # Q6_K, SUB 16
        tl.static_assert(TYPE == Q6_K, "unsupported GGML type")
        tl.static_assert(GE == 16, "Q6_K tiles decode whole sub-blocks")
        qr = tl.load(q_ptr + r3 * s_q + _plane_offs(g3, GE // 2), mask=m3, other=0)
        hr = tl.load(qh_ptr + r3 * s_qh + _plane_offs(g3, 1), mask=m3, other=0)
        scr = tl.load(sc_ptr + r3 * s_sc + g3 // R, mask=m3, other=0)
        dr = tl.load(d_ptr + r3 * s_d + g3 // (16 * R), mask=m3, other=0.0)
    return qr, hr, scr, dr


@triton.jit
def _qh_bits(hr, GE: tl.constexpr, TYPE: tl.constexpr):
    """The high bits of every element of a group from its qh word hr [BN, BG, 1] (see the
    module doc for the slot order) -> int32 [BN, BG, GE]."""
    e = tl.arange(0, GE)[None, None, :]
    if TYPE == Q6_K:            # e = 8v + 2i + o -> bits 8i + 2(2v + o)
        pos = 8 * ((e % 8) // 2) + 2 * (2 * (e // 8) + e % 2)
        h = (hr >> pos) & 3
    elif TYPE == Q3_K:          # e = 2i + o (hr already shifted for its half) -> bit 4i + o
        pos = 4 * (e // 2) + e % 2
        h = (hr >> pos) & 1
    else:                       # Q5_*: e = 8v + 2i + o -> bit 8i + 2v + o
        pos = 8 * ((e % 8) // 2) + 2 * (e // 8) + e % 2
        h = (hr >> pos) & 1
    return h


@triton.jit
def _i2f(v):
    """Non-negative integers < 2^23 -> float32, exactly, with one OR and one FADD (2^23 + v as
    bits, minus 2^23): full-rate instructions instead of the quarter-rate I2F."""
    return (v.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _decode_raw(qr, hr, scr, dr, TYPE: tl.constexpr):
    """Raw planes from `_load_tile` -> (q float32 [BN, BG, GE], s, m float32 [BN, BG, 1]) with
    w = q * s (+ or -) m as `_apply_scale` says: q holds the integer codes with their offset
    applied (or the values of a float type, for which s and m are unused zeros)."""
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        q = qr.to(tl.float32)
        s = tl.zeros((qr.shape[0], qr.shape[1], 1), tl.float32)
        m = s
    elif TYPE == Q8_0:
        q = _i2f(qr) - 128.0
        s = dr.to(tl.float32)
        m = tl.zeros_like(s)
    elif TYPE == Q4_0 or TYPE == Q4_1 or TYPE == Q5_0 or TYPE == Q5_1:
        qi = _unpack4(qr).to(tl.int32)
        if TYPE == Q5_0 or TYPE == Q5_1:
            qi = qi | (_qh_bits(hr, 2 * qr.shape[2], TYPE) << 4)
        q = _i2f(qi)
        if TYPE == Q4_0:
            q = q - 8.0
        if TYPE == Q5_0:
            q = q - 16.0
        if TYPE == Q4_1 or TYPE == Q5_1:
            s, m = _f16_pair(dr)
        else:
            s = dr.to(tl.float32)
            m = tl.zeros_like(s)
    elif TYPE == Q2_K:  # 4-bit scale and 4-bit min in one byte
        q = _i2f(_unpack2(qr))
        d, dmin = _f16_pair(dr)
        s = d * _i2f(scr & 15)
        m = dmin * _i2f(scr >> 4)
    elif TYPE == Q3_K:  # 2 low bits + 1 high bit, code - 4
        qi = _unpack2(qr).to(tl.int32) | (_qh_bits(hr, 4 * qr.shape[2], TYPE) << 2)
        q = _i2f(qi) - 4.0
        s = dr.to(tl.float32) * scr.to(tl.float32)
        m = tl.zeros_like(s)
    elif TYPE == Q4_K or TYPE == Q5_K:  # scale | min << 8
        qi = _unpack4(qr).to(tl.int32)
        if TYPE == Q5_K:
            qi = qi | (_qh_bits(hr, 2 * qr.shape[2], TYPE) << 4)
        q = _i2f(qi)
        d, dmin = _f16_pair(dr)
        s = d * _i2f(scr & 255)
        m = dmin * _i2f(scr >> 8)
    else:  # Q6_K: 4 low bits + 2 high bits, code - 32
        qi = _unpack4(qr).to(tl.int32) | (_qh_bits(hr, 2 * qr.shape[2], TYPE) << 4)
        q = _i2f(qi) - 32.0
        s = dr.to(tl.float32) * scr.to(tl.float32)
        m = tl.zeros_like(s)
    return q, s, m


@triton.jit
def _decode_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                 r64, rmask, g0, g_end, K,
                 TYPE: tl.constexpr, SUB: tl.constexpr, GE: tl.constexpr, BLOCK_G: tl.constexpr):
    """`_load_tile` + `_decode_raw`: (q [BN, BG, GE], s [BN, BG, 1], m [BN, BG, 1])."""
    qr, hr, scr, dr = _load_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                                 r64, rmask, g0, g_end, K, TYPE, SUB, GE, BLOCK_G)
    return _decode_raw(qr, hr, scr, dr, TYPE)


@triton.jit
def _apply_scale(q, s, m, TYPE: tl.constexpr):
    """w = q * s + m (Q4_1, Q5_1), q * s - m (Q2_K, Q4_K, Q5_K), q * s (other quants), q
    (float types): float32 [BN, BG, GE], the expression order of gguf-py."""
    if TYPE == F32 or TYPE == F16 or TYPE == BF16:
        w = q
    elif TYPE == Q4_1 or TYPE == Q5_1:
        w = q * s + m
    elif TYPE == Q2_K or TYPE == Q4_K or TYPE == Q5_K:
        w = q * s - m
    else:
        w = q * s
    return w


# ------------------------------------------------------------------------------------------------
# dequantize


@triton.jit
def _dequant_kernel(
    q_ptr, qh_ptr, sc_ptr, d_ptr,  # planes [R, *] (see the module doc)
    s_q, s_qh, s_sc, s_d,          # their row strides (elements)
    idx_ptr,     # [S] int32/int64 rows to gather (GATHER), else unused
    out_ptr,     # [S, K] out dtype, row stride stride_o
    S, K, NSUB, stride_o,
    TYPE: tl.constexpr, SUB: tl.constexpr, GATHER: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    PDL: tl.constexpr,   # launched with programmatic dependent launch (forge/kernels/pdl.py)
):
    pdl_launch(PDL)
    pdl_wait(PDL)        # before the row ids (GATHER: token ids from earlier kernels) and out
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    orow = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = orow < S
    if GATHER:
        r64 = tl.load(idx_ptr + orow, mask=rmask, other=0).to(tl.int64)
    else:
        r64 = orow.to(tl.int64)
    s0 = pid_s * BLOCK_S
    q, s, m = _decode_tile(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d,
                           r64, rmask, s0, NSUB, K, TYPE, SUB, SUB, BLOCK_S)
    w = _apply_scale(q, s, m, TYPE)
    k = (s0 + tl.arange(0, BLOCK_S))[None, :, None] * SUB + tl.arange(0, SUB)[None, None, :]
    optr = out_ptr + orow.to(tl.int64)[:, None, None] * stride_o + k
    tl.store(optr, w.to(out_ptr.dtype.element_ty), mask=rmask[:, None, None] & (k < K))


def _dequant_default(info: TypeInfo) -> dict:
    # ~4-8 KiB of output per program; the kernel is a pure stream.
    bs = max(1, 256 // info.sub)
    return {"BLOCK_N": 16, "BLOCK_S": bs, "num_warps": 4, "num_stages": 1}


def dequantize(qt: QTensor, rows: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as `dtype` [rows, cols] (bit-exact to gguf for float32).

    rows: optional int32/int64 [S] row ids to gather (an embedding lookup) -> [S, cols].
    out: optional destination [S, cols] of `dtype` (row stride free, unit column stride).
    """
    info = check_qtensor("qt", qt)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    nrows, cols = qt.shape
    q = qt.data["q"]
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or \
                rows.dtype not in (torch.int32, torch.int64):
            raise ValueError("rows: expected a 1-D int32/int64 tensor of row ids")
        if rows.device != q.device:
            raise ValueError(f"rows: on {rows.device}, the weight is on {q.device}")
        rows = rows.contiguous()
        n = rows.shape[0]
    else:
        n = nrows
    if out is None:
        out = torch.empty((n, cols), dtype=dtype, device=q.device)
    elif (out.shape != (n, cols) or out.dtype != dtype or out.stride(1) != 1
          or out.device != q.device):
        raise ValueError(f"out: expected {dtype} {(n, cols)} with unit column stride on {q.device}")
    if n == 0:
        return out
    nsub = triton.cdiv(cols, info.sub)
    cfg = _dequant_config(qt.ggml_type, n, cols)
    bn, bs = cfg["BLOCK_N"], cfg["BLOCK_S"]
    grid = (triton.cdiv(n, bn), triton.cdiv(nsub, bs))
    _dequant_kernel[grid](
        *plane_args(qt), rows if rows is not None else q, out, n, cols, nsub, out.stride(0),
        TYPE=qt.ggml_type, SUB=info.sub, GATHER=rows is not None, BLOCK_N=bn, BLOCK_S=bs,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        enable_fp_fusion=False,  # w = q*s + b rounded twice, exactly like gguf-py
        **pdl.launch_args(),
    )
    return out


@functools.lru_cache(maxsize=4096)
def _dequant_config(ggml_type: int, n: int, cols: int) -> dict:
    """The "dequant" launch config (cached: a prefill step dequantizes every weight, and a
    table lookup per call was a measurable part of its host time)."""
    return tuning.get_config("dequant", tuning.bucket(N=n, K=cols),
                             _dequant_default(TYPES[ggml_type]))


def clear_config_cache() -> None:
    """Forget cached launch configs (tuning.clear_cache calls this)."""
    _dequant_config.cache_clear()


def jit_attrs(fn, sig: dict, divisible: tuple[str, ...] = ()) -> dict:
    """ASTSource attrs as Triton's JIT specializes a launch: every pointer argument (a torch
    tensor, 16-byte aligned) and the integer arguments named in `divisible` (row strides of
    planes padded to ROW_ALIGN bytes, activation strides at model sizes) are divisible by 16.
    Without them a compile scalarizes the vector loads and needs several times the registers."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if name in sig and (str(sig[name]).startswith("*") or name in divisible)}


def _compile_specs() -> list[dict]:
    specs = []
    for tid, info in TYPES.items():
        cfg = _dequant_default(info)
        # bf16 output (the prefill path: dequantize + torch.matmul), float32 (the reference),
        # and the gather (embedding) variant for the usual embedding table types
        variants = [("*bf16", False), ("*fp32", False)]
        if info.name in ("F16", "Q8_0", "Q4_K", "Q6_K"):
            variants.append(("*bf16", True))
        for out, gather in variants:
            sig = dict(plane_signature(tid))
            sig.update({f"s_{p}": "i32" for p in PLANES})
            sig.update({"idx_ptr": "*i64", "out_ptr": out, "S": "i32", "K": "i32",
                        "NSUB": "i32", "stride_o": "i32", "PDL": "constexpr"})
            specs.append({
                "name": f"_dequant_kernel[{info.name},{out[1:]}{',gather' if gather else ''}]",
                "fn": _dequant_kernel,
                "signature": sig,
                "constexprs": {"TYPE": tid, "SUB": info.sub, "GATHER": gather,
                               "BLOCK_N": cfg["BLOCK_N"], "BLOCK_S": cfg["BLOCK_S"], "PDL": False},
                "attrs": jit_attrs(_dequant_kernel, sig,
                                   ("s_q", "s_qh", "s_sc", "s_d", "K", "stride_o")),
                "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            })
    return specs


COMPILE_SPECS: list[dict] = _compile_specs()
# as Hopper launches it (PDL), the decode-path type of Q4_K_M
COMPILE_SPECS.append(pdl.with_pdl(next(s for s in COMPILE_SPECS
                                       if s["name"] == "_dequant_kernel[Q4_K,bf16]")))
