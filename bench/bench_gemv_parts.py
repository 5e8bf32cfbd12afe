"""Where the batch-1 GEMV's time goes between a pure read and the full kernel, on a GPU (no test).

bench_gemv_floor.py puts the GEMV next to a kernel that only reads the same number of bytes. This
script takes the GEMV apart instead: one kernel with the GEMV's grid, program shape, loads, PDL
and PREFETCH 2 structure (the next step's weight loads issued before this step's decode, the
first step's before the PDL wait), at growing levels of work:

    q       the "q" plane's words only, ORed together (the bytes that carry the codes)
    planes  every weight plane of the step (q, qh, sc, d: `_gv_loads`), ORed together
    x       planes, and the step's pre-quantized x (`_gv_xpre`: codes and scales loaded, the
            sums of the codes computed with dp4a against 0x01010101), ORed
    full    the GEMV's own step (`_gv_step`, X_PRE), summed per row and stored
    nosum   timing only: full, with the sums of x's codes (dp4a against 0x01010101, per word and
            step) replaced by one 4-byte load per chunk, as if quantize_x stored them; its
            result is not the GEMV's (the stand-in reads other bytes of x)

Each level is timed like the GEMV: CUDA-graph replay over rotated copies of the weight, so
nothing comes from L2. Next to them: the shipped GEMV (`linear`) and the pure-read floor of
bench_gemv_floor.py with the first load before the PDL wait. A step from one level to the next
is the cost of what that level adds: loads of other planes, x (its loads and the sums of its
codes), or the decode. The levels are not additive parts: nosum - full is what the sums cost
inside the full step, which is more than their share of x - planes. The parts kernel always has
one program per row block (SPLIT_K 1) and the PREFETCH 2 loop, whatever the shipped config says
(where the shipped entry has another PREFETCH or SPLIT_K, "full" and "GEMV" differ by that).
Where the shipped entry runs 1-warp programs of 2 rows (Q4_K 14336x4096 and 4096x4096 on sm90),
"full" ran 0.5-1.1 us slower than the shipped GEMV with the same config and arithmetic
(sessions 12 and 13), so a difference between levels there need not carry over to the GEMV.
"nosum" (the sums of x's codes loaded, not computed) saved 9% at 4096x4096 here; built into
the GEMV (quantize_x storing the sums) it saved nothing there, and 8B decode got 1% slower
(bench/results/run17/NOTES.md).

    python bench/bench_gemv_parts.py                    # Q4_K, Q8_0 at the 8B shapes
    python bench/bench_gemv_parts.py --types Q4_K --shapes 4096x14336 --json out.json

Only the int8 path (X_INT8 + X_PRE: the types in matmul.INT8_TYPES) is taken apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autotune.spaces import _qweight, _rotations  # noqa: E402
from autotune.timing import graph_ms  # noqa: E402
from bench_gemv_floor import ROTATE_BYTES, gemv_us, read_floor_us, read_pool  # noqa: E402
from bench_matmul import SHAPES, copy_bandwidth  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402
from forge.kernels import pdl  # noqa: E402
from forge.kernels.matmul import (_anchor_q, _gv_apply_q, _gv_dep, _gv_ipart,  # noqa: E402
                                  _gv_loads, _gv_qwords, _gv_step, _gv_xpre, _or_all)
from forge.kernels.pdl import pdl_launch, pdl_wait  # noqa: E402

LEVELS = ("q", "planes", "x", "full", "nosum")


@triton.jit
def _parts_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0, c_end,
                 TYPE: tl.constexpr, V: tl.constexpr, BB: tl.constexpr, EVEN: tl.constexpr,
                 LEVEL: tl.constexpr):
    if LEVEL == 0:
        w, _ = _gv_qwords(q_ptr, s_q, r3, c0, c_end, V, BB, EVEN)    # (as `_gv_loads`)
        w = w.to(tl.uint32, bitcast=True)
        h, sc, d = 0, 0, 0
    else:
        w, h, sc, d = _gv_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, c0,
                                c_end, TYPE, V, BB, EVEN)
    return w, h, sc, d


@triton.jit
def _parts_step(acc, dacc, w, h, sc, d, xq_ptr, xs_ptr, stride_xq, stride_xs, c0, c_end, K,
                mg, lm, zu, ones, TYPE: tl.constexpr, V: tl.constexpr, E: tl.constexpr,
                BB: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, LEVEL: tl.constexpr):
    t0 = c0 * 0
    if LEVEL == 0:
        dacc |= _or_all(w)
    elif LEVEL == 1:
        dacc |= _gv_dep(w, h, sc, d, ones, TYPE)
    elif LEVEL == 2:
        dacc |= _gv_dep(w, h, sc, d, ones, TYPE)
        q, s, xs = _gv_xpre(xq_ptr, xs_ptr, t0, stride_xq, stride_xs, c0, c_end, V, E, BB, EVEN,
                            ASM)
        dacc |= _or_all(q[0]) | _or_all(s) | _or_all(xs)
        if E == 8:
            dacc |= _or_all(q[1])
    elif LEVEL == 4:
        q, s, xs = _gv_xpre(xq_ptr, xs_ptr, t0, stride_xq, stride_xs, c0, c_end, V, E, BB, EVEN,
                            ASM)
        cb = c0 + tl.arange(0, BB)[None, None, :]
        if EVEN:
            s1 = tl.load(xq_ptr + cb)
        else:
            s1 = tl.load(xq_ptr + cb, mask=cb < c_end, other=0)
        dep = _gv_dep(w, h, sc, d, zu, TYPE)
        p = _gv_ipart(w, h, lm, _anchor_q(q, dep, E), TYPE, V, ASM)
        acc = _gv_apply_q(acc, p, s1, xs, 0, sc, d, TYPE, E)
    else:
        acc, acc1, ss0, ss1 = _gv_step(
            acc, acc, acc, acc, w, h, sc, d, xq_ptr, xq_ptr, xs_ptr, xq_ptr, t0, t0, K, 0,
            stride_xq, stride_xs, c0, c_end, mg, lm, zu, TYPE, V, E, BB, 1, EVEN, False, True,
            ASM, True, False)
    return acc, dacc


@triton.jit
def _parts_kernel(xq_ptr, xs_ptr, q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, out_ptr,
                  dout_ptr, N, K, NCH, stride_xq, stride_xs, magic, lanes, zero, ones,
                  TYPE: tl.constexpr, V: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr,
                  PDL: tl.constexpr, LEVEL: tl.constexpr):
    """The GEMV of one token row under PREFETCH 2, doing the work of LEVEL (module doc)."""
    pdl_launch(PDL)
    BB: tl.constexpr = BLOCK_K // (V * E)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    r3 = tl.minimum(rows, N - 1).to(tl.int64)[None, :, None]
    mg = magic.to(tl.uint32, bitcast=True)
    lm = lanes.to(tl.uint32, bitcast=True)
    zu = zero.to(tl.uint32, bitcast=True)
    on = ones.to(tl.uint32, bitcast=True)
    acc = tl.zeros((1, BLOCK_N, BB), tl.float32)
    dacc = tl.zeros((1, 1, BB), tl.uint32)
    c_last = (tl.cdiv(NCH, BB) - 1) * BB
    w, h, sc, d = _parts_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3, 0, NCH,
                               TYPE, V, BB, EVEN, LEVEL)
    pdl_wait(PDL)
    for c0 in range(0, c_last, BB):
        wn, hn, scn, dn = _parts_loads(q_ptr, qh_ptr, sc_ptr, d_ptr, s_q, s_qh, s_sc, s_d, r3,
                                       c0 + BB, NCH, TYPE, V, BB, EVEN, LEVEL)
        acc, dacc = _parts_step(acc, dacc, w, h, sc, d, xq_ptr, xs_ptr, stride_xq, stride_xs,
                                c0, NCH, K, mg, lm, zu, on, TYPE, V, E, BB, EVEN, ASM, LEVEL)
        w, h, sc, d = wn, hn, scn, dn
    acc, dacc = _parts_step(acc, dacc, w, h, sc, d, xq_ptr, xs_ptr, stride_xq, stride_xs,
                            c_last, NCH, K, mg, lm, zu, on, TYPE, V, E, BB, EVEN, ASM, LEVEL)
    if LEVEL >= 3:
        y = tl.sum(tl.reshape(acc, (BLOCK_N, BB)), axis=1)
        tl.store(out_ptr + rows, y, mask=rows < N)
    else:
        tl.store(dout_ptr + pid, tl.max(tl.reshape(dacc, (BB,)), axis=0).to(tl.int32,
                                                                              bitcast=True))


def parts_calls(ws, xq, xs, K: int, gv: dict, level: int):
    """A function launching the LEVEL kernel once per rotated weight in ws."""
    w0 = ws[0]
    N = w0.rows
    V, E = mm.gemv_shape(w0.ggml_type)
    bb = gv["BLOCK_K"] // (V * E)
    nch = triton.cdiv(K, V * E)
    bn = gv["BLOCK_N"]
    grid = (triton.cdiv(N, bn),)
    out = torch.empty(N, dtype=torch.float32, device=xq.device)
    dout = torch.empty(grid[0], dtype=torch.int32, device=xq.device)
    planes = [mm._gemv_planes(w) for w in ws]
    on = pdl.enabled() and bool(gv.get("PDL", 1))
    kw = {"launch_pdl": True} if on else {}

    def calls():
        for p in planes:
            _parts_kernel[grid](xq, xs, *p, out, dout, N, K, nch, xq.stride(0), xs.stride(0),
                                mm.MAGIC, mm._lanes_mask(w0.ggml_type), 0, -1,
                                TYPE=w0.ggml_type, V=V, E=E, BLOCK_N=bn, BLOCK_K=bb * V * E,
                                EVEN=nch % bb == 0 and K % (V * E) == 0,
                                ASM=not mm._INTERPRET and torch.version.hip is None, PDL=on,
                                LEVEL=level,
                                num_warps=gv["num_warps"], num_stages=1, **kw)

    return calls, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="Q4_K,Q8_0")
    ap.add_argument("--shapes", default="4096x14336,14336x4096,4096x4096")
    ap.add_argument("--config", default=None,
                    help="JSON: keys laid over the shipped GEMV config (BLOCK_N, BLOCK_K, "
                    "num_warps, PDL) for the parts kernel; the shipped GEMV is timed as it is")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    over = json.loads(args.config) if args.config else {}
    if not torch.cuda.is_available():
        print("bench_gemv_parts: needs a GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    copy = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s; "
          f"PDL {'on' if pdl.enabled() else 'off'}")
    hdr = (f"{'shape':>11} {'type':>5} {'MB':>5} | {'floor':>12} | " +
           " | ".join(f"{lv:>12}" for lv in LEVELS) + f" | {'GEMV':>12} | config")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for sname in args.shapes.split(","):
        N, K = SHAPES[sname]
        for tname in args.types.split(","):
            if tname not in mm.INT8_TYPES:
                print(f"{tname}: not an int8-path type, skipped")
                continue
            w, _ = _qweight(torch, tname, N, K, dev)
            nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
            pool = read_pool(nbytes, dev)
            floor, _ = read_floor_us(nbytes, "pre", pool)
            del pool
            ws = _rotations(w, ROTATE_BYTES, cap=63)
            x = torch.randn((1, K), device=dev, generator=gen).to(torch.bfloat16)
            gv = dict(mm._configs(w.ggml_type, 1, N, K)[0], **over)
            V, E = mm.gemv_shape(w.ggml_type)
            xq, xs = mm.quantize_x(x, V, E)
            res = {"shape": sname, "type": tname, "N": N, "K": K, "bytes": nbytes,
                   "copy_GBps": copy, "config": gv, "floor_pre_us": floor, "levels_us": {}}
            for i, lv in enumerate(LEVELS):
                calls, out = parts_calls(ws, xq, xs, K, gv, i)
                res["levels_us"][lv] = graph_ms([calls]) / len(ws) * 1e3
                if lv == "full":    # the parts kernel's full level is the GEMV's arithmetic
                    calls()
                    ref = mm.linear(x, ws[-1]).float()[0]
                    err = (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-9)
                    res["full_vs_linear_rel_err"] = err
            outs = [torch.empty((1, N), device=dev, dtype=torch.bfloat16) for _ in ws]
            res["gemv_us"] = gemv_us(ws, x, outs, None)
            del ws, outs
            torch.cuda.empty_cache()
            gb = nbytes / 1e3

            def cell(us):
                return f"{us:5.2f} {gb / us / copy:6.1%}"

            print(f"{sname:>11} {tname:>5} {nbytes / 1e6:5.1f} | {cell(floor)} | " +
                  " | ".join(cell(res["levels_us"][lv]) for lv in LEVELS) +
                  f" | {cell(res['gemv_us'])} | BLOCK_N {gv['BLOCK_N']} BLOCK_K "
                  f"{gv['BLOCK_K']} warps {gv['num_warps']}; shipped PREFETCH "
                  f"{gv.get('PREFETCH', 0)} SPLIT_K {gv.get('SPLIT_K', 1)} (full vs linear: "
                  f"{res['full_vs_linear_rel_err']:.1e})", flush=True)
            rows.append(res)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print("us per kernel and % of the copy rate. floor: a pure read of the bytes, first load "
          "before the PDL wait (bench_gemv_floor.py); q / planes / x / full: the parts kernel "
          "(module doc); GEMV: linear under the shipped config.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
