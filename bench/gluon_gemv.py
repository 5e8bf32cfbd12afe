"""The shared-memory Q4_K / Q8_0 GEMV (forge/kernels/gemv_async.py) over its launch grid, against
the Triton GEMV (matmul.py, the table's config with ASYNC 0) on the same weights, on a GPU; and,
with --check, its sm90 compile on the CPU (registers, shared memory, cp.async / barrier counts).

Timing as bench_gemv_floor.py: CUDA-graph replay over rotated weight copies (nothing from L2),
PDL on, us per GEMV; x quantized once (quantize_x) and shared, as a producer kernel does it in a
model. Each config's output is checked against the float64 product of the dequantized weight.

    python bench/gluon_gemv.py --check [--type Q8_0]
    python bench/gluon_gemv.py --json out.json [--type Q8_0] [--shapes 4096x4096,...]
        [--grid BN:W:S:XA,...]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forge.kernels import gemv_async  # noqa: E402

SHAPES = "4096x14336,14336x4096,4096x4096,6144x4096,28672x4096"
GRID = [(bn, w, s, xa) for bn in (2, 4) for w in (1, 2) for s in (3, 4, 6) for xa in (1, 0)]


TYPES = {"Q4_K": gemv_async.Q4_K, "Q8_0": gemv_async.Q8_0}


def launch(xq, xs, w, out, BN=2, W=1, S=3, XA=1, PDL=False):
    N, K = w.shape
    gemv_async.launch(xq, xs, w.data, N, K, out, {"ASYNC": S, "ASYNC_BN": BN, "ASYNC_WARPS": W,
                                                  "ASYNC_XA": XA, "PDL": int(PDL)},
                      ggml_type=w.ggml_type)


def check_compile(BN=2, W=1, S=3, XA=1, PDL=True, RESID=False, TYPE=gemv_async.Q4_K) -> dict:
    """Compile for sm90 on the CPU; SASS instruction counts of interest."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from autotune import report
    sig = {"xq_ptr": "*i32", "xs_ptr": "*fp32", "q_ptr": "*i32", "sc_ptr": "*i32",
           "d_ptr": "*i32", "s_q": "i32", "s_sc": "i32", "s_d": "i32", "out_ptr": "*bf16",
           "res_ptr": "*bf16", "N": "i32", "NCH": "i32", "TYPE": "constexpr", "BN": "constexpr", "W": "constexpr",
           "S": "constexpr", "XA": "constexpr", "PDL": "constexpr", "RESID": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(8)}
    src = GluonASTSource(gemv_async._gemv_async_kernel, sig,
                         {"TYPE": TYPE, "BN": BN, "W": W, "S": S, "XA": XA, "PDL": PDL,
                          "RESID": RESID}, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": W})
    s = report.cuobjdump(k.asm["cubin"], "-sass")
    info = report.inspect_cuda(k.asm["cubin"], k.asm["ptx"], k.metadata.shared, W, sass=s)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", s, re.M)
    cnt = {}
    for o in ops:
        base = o.split(".")[0]
        cnt[base] = cnt.get(base, 0) + 1
    return {"regs": info["regs"], "spills": info.get("spill_stores", 0),
            "shared": k.metadata.shared, "LDGSTS": cnt.get("LDGSTS", 0), "BAR": cnt.get("BAR", 0), "LDS": cnt.get("LDS", 0), "IDP": cnt.get("IDP", 0),
            "LDG": cnt.get("LDG", 0), "DEPBAR": cnt.get("DEPBAR", 0), "sass": s}


def parse_grid(text: str) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compile for sm90 only (CPU)")
    ap.add_argument("--json", help="write the timings here")
    ap.add_argument("--shapes", default=SHAPES, help="NxK,... (default: the Llama-3-8B shapes)")
    ap.add_argument("--grid", help="BN:W:S:XA,... (default: BN 2 / 4, W 1 / 2, S 3 / 4 / 6, "
                                   "XA 1 / 0)")
    ap.add_argument("--sass", help="with --check: write the first config's SASS here")
    ap.add_argument("--resid", action="store_true", help="with --check: the residual epilogue")
    ap.add_argument("--type", default="Q4_K", choices=sorted(TYPES), help="weight type")
    args = ap.parse_args(argv)
    grid = parse_grid(args.grid) if args.grid else GRID
    if args.check:   # one JSON object per config and line (the test parses them)
        for i, (bn, w, s, xa) in enumerate(grid):
            r = check_compile(bn, w, s, xa, PDL=True, RESID=args.resid, TYPE=TYPES[args.type])
            if i == 0 and args.sass:
                Path(args.sass).write_text(r["sass"])
            r["STL"] = len(re.findall(r"\bSTL\b", r.pop("sass")))
            print(json.dumps(dict(r, BN=bn, W=w, S=s, XA=xa, RESID=args.resid, type=args.type)),
                  flush=True)
        return 0
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]
    run_gpu(shapes, grid, args.json, args.type)
    return 0


def run_gpu(shapes, grid, json_path, qtype="Q4_K"):
    from autotune.spaces import _qweight, _rotations
    from autotune.timing import graph_ms
    from bench_matmul import copy_bandwidth
    from forge.kernels import dequant, tuning
    from forge.kernels import matmul as mm

    dev = torch.device("cuda")
    copy = copy_bandwidth()
    print(f"copy {copy:.0f} GB/s", flush=True)
    gen = torch.Generator(device=dev).manual_seed(7)
    rows = []
    for N, K in shapes:
        w, _ = _qweight(torch, qtype, N, K, dev)
        nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
        x = torch.randn((1, K), device=dev, generator=gen).to(torch.bfloat16)
        ref = (x.double() @ dequant.dequantize(w).double().T)
        scale = ref.abs().max().item()
        xq, xs = mm.quantize_x(x, *mm.gemv_shape(w.ggml_type))
        chunk = gemv_async.CHUNK[w.ggml_type]
        ws = _rotations(w, 512 << 20, cap=63)
        outs = [torch.empty((1, N), device=dev, dtype=torch.bfloat16) for _ in ws]
        table = mm._configs(w.ggml_type, 1, N, K)[0]

        def via_linear(cfg):
            with tuning.override({"linear_gemv": {"*": cfg}}):
                mm.clear_config_cache()
                try:
                    y = mm.linear(x, w)
                    t = graph_ms([lambda: [mm.linear(x, wi, out=o) for wi, o in zip(ws, outs)]])
                finally:
                    mm.clear_config_cache()
            return y, t / len(ws) * 1e3

        # the Triton GEMV: the table's config with ASYNC off; then the table as it is
        y_tri, t_tri = via_linear(dict(table, ASYNC=0))
        e_tri = (y_tri.double() - ref).abs().max().item() / scale
        y_tab, t_tab = via_linear(dict(table))
        e_tab = (y_tab.double() - ref).abs().max().item() / scale
        asy = {k: table.get(k) for k in ("ASYNC", "ASYNC_BN", "ASYNC_WARPS", "ASYNC_XA")}
        print(f"{N}x{K} {qtype} {nbytes / 1e6:.1f} MB: Triton GEMV {t_tri:.2f} us "
              f"({nbytes / 1e3 / t_tri / copy:.1%}) err {e_tri:.2e}; table ({asy}) {t_tab:.2f} us "
              f"({nbytes / 1e3 / t_tab / copy:.1%}) err {e_tab:.2e}", flush=True)
        rows.append({"N": N, "K": K, "type": qtype, "kind": "triton", "us": t_tri, "err": e_tri})
        rows.append({"N": N, "K": K, "type": qtype, "kind": "table", "config": asy, "us": t_tab,
                     "err": e_tab})
        for bn, wn, s, xa in grid:
            if (K // chunk) % (32 * wn) or N % bn:
                continue
            y = torch.empty((1, N), device=dev, dtype=torch.bfloat16)
            launch(xq, xs, w, y, bn, wn, s, xa, PDL=False)
            err = (y.double() - ref).abs().max().item() / scale
            dif = (y.double() - y_tri.double()).abs().max().item() / scale

            def mine(bn=bn, wn=wn, s=s, xa=xa):
                for wi, o in zip(ws, outs):
                    launch(xq, xs, wi, o, bn, wn, s, xa, PDL=True)

            t = graph_ms([mine]) / len(ws) * 1e3
            print(f"  BN {bn} W {wn} S {s} XA {xa}: {t:6.2f} us ({nbytes / 1e3 / t / copy:.1%}) "
                  f"{t / t_tri:.3f}x Triton; err {err:.2e}, vs Triton {dif:.2e}", flush=True)
            rows.append({"N": N, "K": K, "type": qtype, "BN": bn, "W": wn, "S": s, "XA": xa, "us": t,
                         "err": err, "vs_triton": dif, "triton_us": t_tri,
                         "pct_copy": nbytes / 1e3 / t / copy})
        ws = outs = None  # (freed before the next shape)
        torch.cuda.empty_cache()
    if json_path:
        Path(json_path).write_text(json.dumps({"copy_GBps": copy, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
