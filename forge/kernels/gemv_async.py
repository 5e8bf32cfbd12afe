"""The batch-1 Q4_K and Q8_0 GEMV with its weights staged through shared memory by async copies
(NVIDIA).

matmul.py's GEMV carries at most one step of weights ahead, in registers (PREFETCH), so what
it has in flight per SM is bounded by registers; run 16's stall sampling put 41% of the Q4_K
GEMV's samples on that prefetch. Here every thread copies its own chunks of the next S - 1 steps
into a ring of S slots in shared memory with `cp.async` (Gluon: Triton's explicit-layout
dialect, NVIDIA sm80+) and reads back only what it copied itself: no register holds a load in
flight, and the depth is S - 1 steps. Triton's loop pipeliner could not be told this (run 18:
it waited for every group at 2 stages, kept the 16-bit planes as plain loads and staged x
through shared memory with a barrier per step); here the 16-bit sc plane is copied as 32-bit
pairs and each thread takes its half.

Same inputs and arithmetic as matmul.py's X_PRE path: the repacked planes (dequant.py) and x
quantized per chunk by `matmul.quantize_x` (int8 codes, one float32 scale per chunk of 32
elements for Q4_K, 16 for Q8_0). Q4_K, per chunk: the integer dot (dp4a) times x's scale, the
sub-block scale and d, minus the min term with the sum of x's codes. Q8_0, per chunk: (the dot
of the stored bytes - 128 x the sum of x's codes) times x's scale and d, whose fp16 plane is
copied as 32-bit pairs as Q4_K's sc plane is. Results equal the Triton GEMV's up to the order
of the float32 sums.

Launch config ("linear_gemv" table keys, matmul.gemv_default): ASYNC = S, the ring's slots (0:
this path off, the default); ASYNC_BN rows per program; ASYNC_WARPS warps per program (a step
is 32 chunks per warp); ASYNC_XA 1: x's codes and scales go through the ring too, 0: plain
loads each step. `eligible` says which calls can take it: Q4_K or Q8_0, one token row, x
pre-quantized, no split, no bias, no norm or act fusion (a residual add is fused), whole steps
(K / CHUNK a multiple of 32 x warps) and N a multiple of ASYNC_BN.

Gluon's barrier analysis still places a BAR.SYNC before each step's reads and copies (sm90
SASS); with 1-2 warps per program they cost little.

Measured (H100; us per GEMV, against the Triton GEMV). Q4_K (bench/results/run19, run20):
4096x14336 12.43 (BN 4 W 2 S 3) vs 14.53, 14336x4096 13.02-13.16 vs 14.03-14.06, 4096x4096
4.13-4.20 vs 5.37-5.49 (77-78%; a pure read of those bytes with PDL: 4.04-4.09), 6144x4096 5.53 /
5.61 (BN 8) vs 7.35; 8B Q4_K_M tg128 400.6 vs 395.4 (run 19). Q8_0 (run20): 4096x4096 6.29-6.37
vs 7.52-7.54 (94% vs 79%), 14336x4096 21.55-21.62 vs 22.69-22.73, 4096x14336 21.60-21.76 vs
22.09-22.45, 6144x4096 9.71-9.83 vs 10.46-10.64, 28672x4096 41.84-42.16 vs 42.95-43.08; 8B Q8_0
tg128 313.7 / 313.2 vs 302.4 / 302.7. Q8_0 wants 2-4 warps per program where Q4_K wants 1-2 (its
steps cover half the columns). Prefetching the steps past the ring into L2 before the PDL wait
was tried and lost almost everywhere (run20's async_l2.patch).
"""
from __future__ import annotations

import functools

import torch

try:  # Gluon ships with Triton >= 3.5; its async copy API moved between versions
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as _cp
    from triton.language.extra import cuda as _tlcuda

    _cp_load = _cp.async_load if hasattr(_cp, "async_load") else _cp.async_copy_global_to_shared
    AVAILABLE = True
except Exception:  # noqa: BLE001 - no Gluon: the path is never taken
    AVAILABLE = False

from forge.kernels import env, pdl, tuning

Q8_0, Q4_K = 8, 12
# elements per chunk (one thread's 4 words of the q plane per step; one x scale each)
CHUNK = {Q4_K: 32, Q8_0: 16}
# off unless a table entry sets ASYNC (its ring slots); the other keys are its program shape
ASYNC_DEFAULT = {"ASYNC": 0, "ASYNC_BN": 2, "ASYNC_WARPS": 1, "ASYNC_XA": 1}
_INTERPRET = env.interpreting()

if AVAILABLE:
    @gluon.jit
    def _dp4a(a, b, c):
        return gl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=gl.int32, is_pure=True, pack=1)

    @gluon.jit
    def _issue_w(qs, scs, ds, slot, j, nsteps, q_ptr, sc_ptr, d_ptr, qoff, scoff, doff,
                 BB: gl.constexpr, TYPE: gl.constexpr):
        """Async copies of step j's weight words (if the step exists) into ring slot `slot`."""
        if j < nsteps:
            c0 = j * BB
            _cp_load(qs.index(slot), q_ptr + (qoff + c0 * 4))
            if TYPE == 12:
                _cp_load(scs.index(slot), sc_ptr + (scoff + c0 // 2))
                _cp_load(ds.index(slot), d_ptr + (doff + c0 // 8))
            else:
                _cp_load(ds.index(slot), d_ptr + (doff + c0 // 4))

    @gluon.jit
    def _issue_x(xes, xos, xss, slot, j, nsteps, xq_ptr, xs_ptr, xoff, xsoff, BB: gl.constexpr,
                 TYPE: gl.constexpr):
        """Async copies of step j's x codes (Q4_K: even and odd words) and scales into slot
        `slot`."""
        if j < nsteps:
            c0 = j * BB
            if TYPE == 12:
                _cp_load(xes.index(slot), xq_ptr + (xoff + c0 * 8))
                _cp_load(xos.index(slot), xq_ptr + (xoff + c0 * 8 + 128))
            else:
                _cp_load(xes.index(slot), xq_ptr + (xoff + c0 * 4))
            _cp_load(xss.index(slot), xs_ptr + (xsoff + c0))

    @gluon.jit
    def _gemv_async_kernel(xq_ptr, xs_ptr, q_ptr, sc_ptr, d_ptr, s_q, s_sc, s_d, out_ptr,
                           res_ptr, N, NCH, TYPE: gl.constexpr, BN: gl.constexpr,
                           W: gl.constexpr, S: gl.constexpr, XA: gl.constexpr,
                           PDL: gl.constexpr, RESID: gl.constexpr):
        """out[rows] = x . W[rows]: BN rows per program, 32 * W chunks per step (one chunk of
        four q words per thread: 32 elements for Q4_K, 16 for Q8_0), a ring of S steps in
        shared memory with S - 1 in flight. q_ptr: the q plane as int32 words [N, K / 8 or
        K / 4]; Q4_K: sc_ptr the int16 sc plane as int32 pairs [N, K / 64], d_ptr int32
        (d, dmin) [N, K / 256]; Q8_0: d_ptr the fp16 d plane as int32 pairs [N, K / 64]
        (sc_ptr unused). xq_ptr / xs_ptr: quantize_x's codes (Q4_K: xquant._xq_word order;
        Q8_0: chunk after chunk) and chunk scales. Whole steps only (NCH % (32 W) == 0).
        RESID: out[rows] = res[rows] + the product (res_ptr: [N], row contiguous)."""
        if PDL:
            _tlcuda.gdc_launch_dependents()
        BB: gl.constexpr = 32 * W
        L3: gl.constexpr = gl.BlockedLayout([BN, 1, 4], [1, 32, 1], [1, W, 1], [2, 1, 0])
        L2: gl.constexpr = gl.SliceLayout(2, L3)                # [BN, BB]
        LX: gl.constexpr = gl.SliceLayout(0, L3)                # [BB, 4]
        LR: gl.constexpr = gl.SliceLayout(1, L2)                # [BN]
        LC: gl.constexpr = gl.SliceLayout(0, L2)                # [BB]
        # one ring slot's layouts: unswizzled, each thread reads back what it copied
        SH3: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
        SH2: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        SH1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

        rows = gl.program_id(0) * BN + gl.arange(0, BN, layout=LR)
        r2 = gl.expand_dims(rows.to(gl.int64), 1)               # [BN, 1]
        cb2 = gl.expand_dims(gl.arange(0, BB, layout=LC), 0)    # [1, BB]
        v = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, L3)))
        v3 = gl.expand_dims(gl.expand_dims(v, 0), 0)            # [1, 1, 4]
        qoff = gl.expand_dims(r2 * s_q + cb2 * 4, 2) + v3       # [BN, BB, 4] words
        xc = gl.arange(0, BB, layout=gl.SliceLayout(1, LX))
        xv = gl.arange(0, 4, layout=gl.SliceLayout(0, LX))
        if TYPE == 12:
            scoff = r2 * s_sc + cb2 // 2                        # [BN, BB]
            doff = r2 * s_d + cb2 // 8
            par = (cb2 % 2) * 16                                # chunk c's half of its sc pair
            # chunk c's even-element word v at (c // 32) * 256 + (c % 32) * 4 + v, odd 128 on
            xoff = gl.expand_dims((xc // 32) * 256 + (xc % 32) * 4, 1) + gl.expand_dims(xv, 0)
        else:
            scoff = cb2                                         # (unused)
            doff = r2 * s_d + cb2 // 4                          # d of chunks 4j .. 4j + 3
            par = ((cb2 // 2) % 2) * 16                         # chunk c's half of its d pair
            xoff = gl.expand_dims(xc * 4, 1) + gl.expand_dims(xv, 0)
        xsoff = gl.arange(0, BB, layout=LC)
        nsteps = NCH // BB

        qs = gl.allocate_shared_memory(gl.int32, [S, BN, BB, 4], SH3)
        ds = gl.allocate_shared_memory(gl.int32, [S, BN, BB], SH2)
        if TYPE == 12:
            scs = gl.allocate_shared_memory(gl.int32, [S, BN, BB], SH2)
        else:
            scs = ds
        if XA:
            xes = gl.allocate_shared_memory(gl.int32, [S, BB, 4], SH2)
            if TYPE == 12:
                xos = gl.allocate_shared_memory(gl.int32, [S, BB, 4], SH2)
            else:
                xos = xes
            xss = gl.allocate_shared_memory(gl.float32, [S, BB], SH1)
        else:
            xes = qs
            xos = qs
            xss = qs

        # the weights are constant: the first steps' copies start before the wait for the
        # previous kernel (which wrote x); one commit group per step, x joining the first groups
        for j in gl.static_range(S - 1):
            _issue_w(qs, scs, ds, j, j, nsteps, q_ptr, sc_ptr, d_ptr, qoff, scoff, doff, BB,
                     TYPE)
        if PDL:
            _tlcuda.gdc_wait()
        for j in gl.static_range(S - 1):
            if XA:
                _issue_x(xes, xos, xss, j, j, nsteps, xq_ptr, xs_ptr, xoff, xsoff, BB, TYPE)
            _cp.commit_group()

        acc = gl.zeros([BN, BB], gl.float32, L2)
        ones = gl.full([1, BB, 4], 0x01010101, gl.int32, L3)
        for i in range(nsteps):
            nxt = i + S - 1         # into the slot step i - 1 used (read an iteration ago)
            _issue_w(qs, scs, ds, nxt % S, nxt, nsteps, q_ptr, sc_ptr, d_ptr, qoff, scoff, doff,
                     BB, TYPE)
            if XA:
                _issue_x(xes, xos, xss, nxt % S, nxt, nsteps, xq_ptr, xs_ptr, xoff, xsoff, BB,
                         TYPE)
            _cp.commit_group()
            _cp.wait_group(S - 1)   # step i's group is complete
            slot = i % S
            w = qs.index(slot).load(L3)
            dw = ds.index(slot).load(L2)
            if XA:
                ev = xes.index(slot).load(LX)
                if TYPE == 12:
                    od = xos.index(slot).load(LX)
                xsc = gl.expand_dims(xss.index(slot).load(LC), 0)
            else:
                c0 = i * BB
                if TYPE == 12:
                    ev = gl.load(xq_ptr + (xoff + c0 * 8))
                    od = gl.load(xq_ptr + (xoff + c0 * 8 + 128))
                else:
                    ev = gl.load(xq_ptr + (xoff + c0 * 4))
                xsc = gl.expand_dims(gl.load(xs_ptr + (xsoff + c0)), 0)
            ev3 = gl.expand_dims(ev, 0)
            if TYPE == 12:
                scw = scs.index(slot).load(L2)
                od3 = gl.expand_dims(od, 0)
                p = _dp4a(w & 0x0F0F0F0F, ev3, gl.zeros_like(w))
                p = _dp4a((w >> 4) & 0x0F0F0F0F, od3, p)
                dot = gl.sum(p, axis=2)                          # [BN, BB]
                xsum = gl.sum(_dp4a(ones, od3, _dp4a(ones, ev3, gl.zeros_like(ev3))), axis=2)
                sc = (scw >> par) & 0xFFFF                       # scale | min << 8
                dd = (dw & 0xFFFF).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
                dmin = ((dw >> 16) & 0xFFFF).to(gl.uint16).to(gl.float16,
                                                              bitcast=True).to(gl.float32)
                acc += dot.to(gl.float32) * (xsc * (dd * (sc & 255).to(gl.float32))) \
                    - (dmin * (sc >> 8).to(gl.float32)) * (xsum.to(gl.float32) * xsc)
            else:
                # bytes are the codes + 128: the dot of the codes is p - 128 * (x's code sum)
                dot = gl.sum(_dp4a(w, ev3, gl.zeros_like(w)), axis=2)
                xsum = gl.sum(_dp4a(ones, ev3, gl.zeros_like(ev3)), axis=2)
                dd = ((dw >> par) & 0xFFFF).to(gl.uint16).to(gl.float16,
                                                            bitcast=True).to(gl.float32)
                acc += (dot - 128 * xsum).to(gl.float32) * (xsc * dd)
        _cp.wait_group(0)
        y = gl.sum(acc, axis=1)                                  # [BN]
        if RESID:
            y += gl.load(res_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
        gl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)


@functools.lru_cache(maxsize=None)
def _limits(index: int) -> tuple[int, int]:
    """(compute capability major, shared memory one program may opt in to) of CUDA device index."""
    props = torch.cuda.get_device_properties(index)
    smem = int(getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024)
    return torch.cuda.get_device_capability(index)[0], smem


def _index(device: torch.device | None) -> int | None:
    dev = device if device is not None else torch.device("cuda")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return dev.index if dev.index is not None else torch.cuda.current_device()


def supported(device: torch.device | None = None) -> bool:
    """Gluon present, not the CPU interpreter, an NVIDIA GPU of compute capability >= 8.0 (per
    device, asked once: this runs on every eligible GEMV call)."""
    if not AVAILABLE or _INTERPRET or torch.version.hip is not None:
        return False
    i = _index(device)
    return i is not None and _limits(i)[0] >= 8


def smem_limit(device: torch.device | None = None) -> int:
    """Shared memory one program may use on a supported device; 0 elsewhere, where `eligible`
    with it then admits nothing."""
    return _limits(_index(device))[1] if supported(device) else 0


def smem_bytes(ggml_type: int, gv: dict) -> int:
    """Shared memory of the kernel's ring under config gv: per slot the q words and the d
    (and, Q4_K, sc) words of BN rows x 32 W chunks, and with ASYNC_XA x's code words and
    scales."""
    return _ring_bytes(ggml_type, *check_config(gv))


def _ring_bytes(ggml_type: int, s: int, bn: int, w: int, xa: int) -> int:
    bb = 32 * w
    two = 2 if int(ggml_type) == Q4_K else 1           # Q4_K: sc and d; even and odd x words
    words = bn * bb * 4 + bn * bb * two + (bb * 4 * two + bb if xa else 0)
    return 4 * s * words


KEYS = ("ASYNC", "ASYNC_BN", "ASYNC_WARPS", "ASYNC_XA")


def check_config(gv: dict) -> tuple[int, int, int, int]:
    """(S, BN, W, XA) of a config's ASYNC keys (missing ones: the launcher default); ValueError
    on values the kernel cannot take (those tuning.ENUM_KEYS refuses in a table)."""
    vals = tuple(int(gv.get(k, ASYNC_DEFAULT[k])) for k in KEYS)
    for k, v in zip(KEYS, vals):
        if v not in tuning.ENUM_KEYS[k]:
            raise ValueError(f"{k}: must be one of {tuning.ENUM_KEYS[k]}, got {v}")
    return vals


def eligible(ggml_type: int, T: int, N: int, K: int, gv: dict, x_pre: bool,
             smem: int | None = None) -> bool:
    """Whether a GEMV call of this shape takes this path under config gv (the caller checks the
    rest: no split, bias, norm or act fusion; a residual is fine). smem: the shared memory one
    program may have (`smem_limit`); a config whose ring needs more falls back (None: not
    checked)."""
    cfg = check_config(gv)
    s, bn, w, _ = cfg
    ch = CHUNK.get(int(ggml_type))
    return (s > 0 and ch is not None and T == 1 and x_pre and K % ch == 0
            and (K // ch) % (32 * w) == 0 and N % bn == 0
            and (smem is None or _ring_bytes(ggml_type, *cfg) <= smem))


def launch(xq: torch.Tensor, xs: torch.Tensor, planes: dict, N: int, K: int, out: torch.Tensor,
           gv: dict, residual: torch.Tensor | None = None, ggml_type: int = Q4_K) -> None:
    """out [1, N] (row contiguous) = x . W^T (+ residual [1, N]) from quantize_x's (xq, xs) and
    a weight's repacked planes (dequant.repack; Q4_K: "q" uint8, "sc" int16, "d" int32; Q8_0:
    "q" uint8, "d" float16)."""
    t = int(ggml_type)
    if t not in CHUNK:
        raise ValueError(f"gemv_async: no kernel for GGML type {t}")
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    s, bn, w, xa = check_config(gv)
    q = planes["q"].view(torch.int32)
    d = planes["d"].view(torch.int32)
    sc = planes["sc"].view(torch.int32) if t == Q4_K else d
    kw = pdl.launch_args(bool(gv.get("PDL", 1)))
    use_pdl = kw.pop("PDL")
    _gemv_async_kernel[(N // bn,)](
        xq, xs, q, sc, d, q.stride(0), sc.stride(0), d.stride(0), out,
        residual if residual is not None else out, N, K // CHUNK[t],
        TYPE=t, BN=bn, W=w, S=s, XA=xa, PDL=use_pdl, RESID=residual is not None, num_warps=w,
        **kw)
