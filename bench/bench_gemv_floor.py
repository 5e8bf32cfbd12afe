"""The batch-1 GEMV against the fastest pure read of the same bytes, on a GPU (not a test).

bench_matmul.py states the GEMV's bandwidth as a fraction of a 1 GiB copy. A GEMV of a 10-34 MB
weight cannot stream at a 1 GiB copy's rate: each kernel ramps up (programs launched, the first
loads a memory round trip away) and drains (the last programs finishing alone). This script
measures that floor: a Triton kernel that only reads the same number of bytes (16-byte loads,
every program summing a contiguous slab, best of a few program sizes), timed the way the GEMV
is, by CUDA-graph replay over rotated copies (nothing comes from L2), each launch
- without PDL (a kernel starts after the previous one completed), and
- with PDL, its first loads issued before the wait for the previous kernel (`griddepcontrol`,
  kernels/pdl.py): the loads of one kernel overlap the drain of the one before, as the GEMV's
  PDL + PREFETCH configs do with their weights.
Next to it, the GEMV under the shipped config and under variants of it (PDL, PREFETCH, L2PF,
or a --configs grid), and torch's bf16 GEMV (cuBLAS, x @ W.T) timed the same way.

    python bench/bench_gemv_floor.py                         # F16, Q8_0, Q4_K at the 8B shapes
    python bench/bench_gemv_floor.py --types Q4_K --shapes 4096x4096 --json out.json
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
from bench_matmul import SHAPES, copy_bandwidth  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402
from forge.kernels import pdl, tuning  # noqa: E402
from forge.kernels.matmul import _l2_prefetch  # noqa: E402
from forge.kernels.pdl import pdl_launch, pdl_wait  # noqa: E402

ROTATE_BYTES = 512 << 20
# (num_warps, bytes per program) of the read kernel: the best of these is the floor
READ_CONFIGS = [(w, b) for w in (1, 2, 4) for b in (4096, 8192, 16384, 32768)]


@triton.jit
def _read_kernel(src_ptr, out_ptr, WORDS: tl.constexpr, STEPS: tl.constexpr,
                 PDL: tl.constexpr, PRE: tl.constexpr):
    """Program p sums the int32 words [p * WORDS * STEPS, (p + 1) * WORDS * STEPS) of src
    (WORDS per step: 4 per thread, one 16-byte load) into out[p]. PRE: the first step's load
    is issued before the PDL wait (src is constant, like a weight); PRE 2: before that, the
    whole slab is prefetched into L2 (matmul's L2PF)."""
    pdl_launch(PDL)
    base = tl.program_id(0).to(tl.int64) * (WORDS * STEPS)
    offs = tl.arange(0, WORDS)
    if PRE == 2:    # one prefetch per 16 bytes, as the GEMV's L2PF issues one per chunk
        offs4 = tl.arange(0, WORDS // 4) * 4
        for s in range(0, STEPS):
            _l2_prefetch(src_ptr + base + s * WORDS + offs4)
    if PRE:
        acc = tl.load(src_ptr + base + offs)
        pdl_wait(PDL)
        for s in range(1, STEPS):
            acc += tl.load(src_ptr + base + s * WORDS + offs)
    else:
        pdl_wait(PDL)
        acc = tl.zeros((WORDS,), tl.int32)
        for s in range(0, STEPS):
            acc += tl.load(src_ptr + base + s * WORDS + offs)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc))


def read_pool(nbytes: int, dev) -> torch.Tensor:
    """int32 words enough for the rotated slabs of a read of nbytes: at least ROTATE_BYTES (far
    more than the L2 cache), and two slabs of the largest program size."""
    big = READ_CONFIGS[-1][1]
    return torch.zeros(max(ROTATE_BYTES, 2 * -(-nbytes // big) * big) // 4, dtype=torch.int32,
                       device=dev)


def read_floor_us(nbytes: int, pdl_mode: str, pool: torch.Tensor) -> tuple[float, dict]:
    """Best graph time (us per kernel) of reading nbytes (rounded up to whole programs) with
    the read kernel, over READ_CONFIGS, each launch reading the next slab of `pool` (read_pool).
    pdl_mode: "off", "wait" (PDL, wait first), "pre" (PDL, first load before the wait) or "l2"
    (PDL, the whole slab prefetched into L2 before the wait, then as "pre"). Without PDL
    (kernels/pdl.py's enabled(): Hopper and later, FORGE_PDL unset) the PDL modes launch
    without it; "l2" needs NVIDIA's prefetch instruction (NaN elsewhere)."""
    best, best_cfg = float("inf"), {}
    if pdl_mode == "l2" and torch.version.hip is not None:
        return float("nan"), {}
    for nw, per_prog in READ_CONFIGS:
        words = nw * 32 * 4
        steps = per_prog // (words * 4)
        if steps < 1:
            continue
        progs = -(-nbytes // per_prog)
        slab = progs * per_prog
        n = min(64, pool.numel() * 4 // slab)
        srcs = [pool[i * slab // 4:(i + 1) * slab // 4] for i in range(n)]
        out = torch.empty(progs, dtype=torch.int32, device=pool.device)
        on = pdl_mode != "off" and pdl.enabled()
        kw = {"launch_pdl": True} if on else {}

        def calls(srcs=srcs, out=out, progs=progs, words=words, steps=steps, nw=nw, kw=kw,
                  on=on):
            for s in srcs:
                _read_kernel[(progs,)](s, out, WORDS=words, STEPS=steps, PDL=on,
                                       PRE={"pre": 1, "l2": 2}.get(pdl_mode, 0), num_warps=nw,
                                       num_stages=1, **kw)

        us = graph_ms([calls]) / len(srcs) * 1e3
        if us < best:
            best, best_cfg = us, {"num_warps": nw, "bytes_per_program": per_prog,
                                  "bytes_read": slab}
    return best, best_cfg


def torch_gemv_us(N: int, K: int, dev, gen) -> float:
    """Graph time per call of torch's x @ W.T at batch 1 with a bf16 weight (cuBLAS), over
    rotated copies like the GEMV's."""
    n = max(1, min(63, -(-ROTATE_BYTES // (N * K * 2))))
    ws = [(torch.randn((N, K), device=dev, generator=gen) * 0.02).to(torch.bfloat16)
          for _ in range(n)]
    x = torch.randn((1, K), device=dev, generator=gen).to(torch.bfloat16)
    outs = [torch.empty((1, N), device=dev, dtype=torch.bfloat16) for _ in ws]

    def calls():
        for w, o in zip(ws, outs):
            torch.matmul(x, w.t(), out=o)

    return graph_ms([calls]) / n * 1e3   # (the copies are freed on return)


def gemv_us(ws, x, outs, cfg: dict | None) -> float:
    """Graph time per GEMV over the rotated weights ws (cfg: a full linear_gemv config laid
    over every table, else the tables as they are)."""
    def calls():
        for w, o in zip(ws, outs):
            mm.linear(x, w, out=o)

    if cfg is None:
        return graph_ms([calls]) / len(ws) * 1e3
    with tuning.override({"linear_gemv": {"*": cfg}}):
        mm.clear_config_cache()
        try:
            return graph_ms([calls]) / len(ws) * 1e3
        finally:
            mm.clear_config_cache()


VARIED = ("PDL", "PREFETCH", "L2PF")
GRID = ("BLOCK_N", "BLOCK_K", "num_warps", "SPLIT_K")


def variants(shipped: dict) -> list[dict]:
    """The shipped config with other (PDL, PREFETCH) pairs, and with L2 prefetch (L2PF) at a
    few distances, 64 standing for "the whole program's weights at its start"."""
    pdl0, pf0 = int(shipped.get("PDL", 1)), int(shipped.get("PREFETCH", 0))
    out = [dict(shipped, PDL=pd, PREFETCH=pf) for pd in (0, 1) for pf in (0, 1, 2)
           if (pd, pf) != (pdl0, pf0)]
    out += [dict(shipped, L2PF=d) for d in (1, 2, 4, 64)]
    out += [dict(shipped, PREFETCH=0, L2PF=d) for d in (2, 64) if pf0]
    out += [dict(shipped, PDL=1, L2PF=d) for d in (2, 64) if not pdl0]
    return out


def parse_configs(ap, text: str) -> list[dict]:
    """--configs: a JSON list of partial linear_gemv configs, each key one the GEMV launcher
    reads, each value as a tuning table would hold it."""
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as e:
        ap.error(f"--configs: not JSON ({e})")
    if not isinstance(extra, list) or not all(isinstance(c, dict) for c in extra):
        ap.error("--configs: expected a JSON list of objects")
    known = set(mm.gemv_default(mm.Q4_K, 1, 4096, 4096)) | tuning.LAUNCH_KEYS
    for i, c in enumerate(extra):
        bad = sorted(set(c) - known)
        if bad:
            ap.error(f"--configs[{i}]: unknown keys {bad} (the GEMV reads {sorted(known)})")
        try:
            tuning._validate_entry(f"--configs[{i}]", c)
        except ValueError as e:
            ap.error(str(e))
    return extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="F16,Q8_0,Q4_K")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--no-variants", action="store_true", help="time the shipped config only")
    ap.add_argument("--configs", default=None,
                    help="JSON list of partial linear_gemv configs, each laid over the shipped "
                    "one and timed instead of the built-in variants (e.g. '[{\"BLOCK_N\": 1, "
                    "\"num_warps\": 4, \"BLOCK_K\": 4096, \"L2PF\": 2}]')")
    ap.add_argument("--no-floor", action="store_true", help="skip the pure-read floors")
    ap.add_argument("--no-torch", action="store_true", help="skip torch's bf16 GEMV")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    extra = parse_configs(ap, args.configs) if args.configs else None
    if extra is not None and args.no_variants:
        ap.error("--configs and --no-variants: choose one")
    if not torch.cuda.is_available():
        print("bench_gemv_floor: needs a GPU", file=sys.stderr)
        return 2
    if not pdl.enabled():
        print("note: PDL is not available here (kernels/pdl.py): the PDL columns launch without "
              "it, as the GEMVs do")
    dev = torch.device("cuda")
    copy = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s")
    rows = []
    hdr = (f"{'shape':>12} {'type':>5} {'MB':>7} | {'read us':>7} {'%copy':>6} {'pre':>6} "
           f"{'%copy':>6} {'l2':>6} {'%copy':>6} | {'gemv us':>7} {'%copy':>6} | best variant")
    print(hdr)
    print("-" * len(hdr))
    gen = torch.Generator(device=dev).manual_seed(0)
    for sname in args.shapes.split(","):
        N, K = SHAPES[sname]
        if not args.no_torch:
            t_us = torch_gemv_us(N, K, dev, gen)
            tb = N * K * 2
            print(f"{sname:>12} {'torch':>5} {tb / 1e6:7.1f} | torch.matmul, bf16 weight: "
                  f"{t_us:7.2f} us {tb / 1e3 / t_us / copy:6.1%}", flush=True)
            rows.append({"shape": sname, "type": "torch_bf16", "N": N, "K": K, "bytes": tb,
                         "copy_GBps": copy, "gemv_us": t_us})
        for tname in args.types.split(","):
            w, _ = _qweight(torch, tname, N, K, dev)
            nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
            floors = {m: (float("nan"), {}) for m in ("off", "pre", "l2")}
            if not args.no_floor:
                pool = read_pool(nbytes, dev)
                floors = {m: read_floor_us(nbytes, m, pool) for m in floors}
                del pool
            ws = _rotations(w, ROTATE_BYTES, cap=63)
            x = torch.randn((1, K), device=dev, generator=gen).to(torch.bfloat16)
            outs = [torch.empty((1, N), device=dev, dtype=torch.bfloat16) for _ in ws]
            tid = w.ggml_type
            shipped = mm._configs(tid, 1, N, K)[0]
            res = {"shape": sname, "type": tname, "N": N, "K": K, "bytes": nbytes,
                   "copies": len(ws), "copy_GBps": copy, "shipped_config": shipped,
                   "read_floor_us": {m: f[0] for m, f in floors.items()},
                   "read_floor_config": {m: f[1] for m, f in floors.items()},
                   "gemv_us": gemv_us(ws, x, outs, None), "variants": []}
            if not args.no_variants:
                for cfg in extra if extra is not None else variants(shipped):
                    cfg = dict(shipped, **cfg)
                    res["variants"].append(dict({k: cfg.get(k, 0) for k in VARIED + GRID},
                                                us=gemv_us(ws, x, outs, cfg), config=cfg))
            del ws, outs
            torch.cuda.empty_cache()
            gb = nbytes / 1e3
            fl = res["read_floor_us"]
            g = res["gemv_us"]
            best = min(res["variants"], key=lambda v: v["us"], default=None)
            shown = VARIED if extra is None else VARIED + GRID
            bv = (" ".join(f"{k} {best[k]}" for k in shown) +
                  f": {best['us']:.2f} us ({gb / best['us'] / copy:.1%})" if best else "-")
            print(f"{sname:>12} {tname:>5} {nbytes / 1e6:7.1f} | {fl['off']:7.2f} "
                  f"{gb / fl['off'] / copy:6.1%} {fl['pre']:6.2f} {gb / fl['pre'] / copy:6.1%} "
                  f"{fl['l2']:6.2f} {gb / fl['l2'] / copy:6.1%} | {g:7.2f} {gb / g / copy:6.1%} | "
                  f"{bv}", flush=True)
            for v in res["variants"]:
                print(f"{'':>28}" + " ".join(f"{k} {v[k]}" for k in shown) +
                      f": {v['us']:.2f} us ({gb / v['us'] / copy:.1%})")
            rows.append(res)
            if args.json:   # after every row: a timeout or a failure keeps what was measured
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print("read us: the pure read of the weight's bytes, no PDL; pre: with PDL, the first load "
          "before the wait; l2: with PDL, the whole slab prefetched into L2 before the wait; "
          "%copy: bytes / time / copy GB/s.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
