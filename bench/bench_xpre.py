"""GEMV with x quantized once (X_PRE) against the in-kernel quantization, on a GPU.

For each (type, N x K) at Llama-3 shapes: the shipped config (tuning tables as at run time)
timed with X_PRE = 0 and X_PRE = 1 (the quantize kernel included: every call quantizes), the
quantize kernel alone, the X_PRE GEMV alone (one quantization shared by the rotated copies), and a small search over rows per program / warps / PREFETCH with X_PRE
= 1 (--search). CUDA-graph replay over rotated weight copies (autotune.timing.graph_ms), median.
Prints a table; --json writes the rows, --table writes the best X_PRE configs as a tuning table
(per-type linear_gemv entries, the shipped keys kept).

    python bench/bench_xpre.py [--types Q4_K,Q6_K,Q8_0] [--shapes 4096x14336,...] [--search]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.spaces import _qweight, _rotations  # noqa: E402
from autotune.timing import graph_ms  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402
from forge.kernels import tuning, xquant  # noqa: E402
from forge.kernels.dequant import TYPE_IDS  # noqa: E402

SHAPES = ["4096x4096", "6144x4096", "28672x4096", "4096x14336", "1024x4096", "128256x4096",
          "3072x2048", "16384x2048", "2048x8192", "2048x2048"]


def _time(fns, reps=30):
    return graph_ms(fns, reps=reps, repeat=max(1, -(-16 // len(fns))), warm_replays=3) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K,Q6_K,Q8_0")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--table")
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    xquant.XQ_REUSE = False                     # every timed call quantizes its x
    rows, table = [], {"arch": "sm90", "family": "hopper", "source": "bench_xpre", "kernels": {}}
    print(f"{'type':5} {'N x K':>12} {'X_PRE 0 us':>10} {'X_PRE 1 us':>9} {'quant us':>8} "
          f"{'GEMV us':>8} {'best us':>8} {'GB/s':>6}  best config")
    for tname in a.types.split(","):
        tid = TYPE_IDS[tname]
        V, E = mm.gemv_shape(tid)
        for sh in a.shapes.split(","):
            n, k = (int(v) for v in sh.split("x"))
            w, _ = _qweight(torch, tname, n, k, dev)
            nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
            copies = _rotations(w)
            x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
            fns = [lambda c=c: mm.linear(x, c) for c in copies]
            mm.clear_config_cache()
            base = dict(mm._configs(tid, 1, n, k)[0])
            ref = mm.linear(x, w).float()

            def run_cfg(cfg):
                with tuning.override({f"linear_gemv.{tname}": {"*": cfg}}):
                    mm.clear_config_cache()
                    try:
                        out = mm.linear(x, w).float()
                        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
                        if err > 3e-2:
                            return None
                        return _time(fns)
                    except Exception as e:  # noqa: BLE001
                        print(f"   {cfg}: {type(e).__name__}: {str(e)[:100]}")
                        return None
                    finally:
                        mm.clear_config_cache()

            t_ship = run_cfg(dict(base, X_PRE=0))   # the shipped config without X_PRE
            xp = dict(base, X_PRE=1)
            t_xpre = run_cfg(xp)
            t_q = _time([lambda: mm.quantize_x(x, V, E)])
            xquant.XQ_REUSE = True                  # one quantization shared by every copy's call
            t_reuse = run_cfg(xp)
            xquant.XQ_REUSE = False
            best, best_t = xp, t_xpre
            if a.search:
                for bn, nw, pf in itertools.product((2, 4, 8), (1, 2, 4), (0, 2)):
                    cfg = dict(base, X_PRE=1, BLOCK_N=bn, num_warps=nw, PREFETCH=pf, SPLIT_K=1,
                               BLOCK_K=mm.gemv_block(tid) * 32 * nw)
                    t = run_cfg(cfg)
                    if t is not None and (best_t is None or t < best_t):
                        best, best_t = cfg, t
            gbs = nbytes / (best_t * 1e-6) / 1e9 if best_t else float("nan")
            keys = {k2: best[k2] for k2 in ("BLOCK_N", "num_warps", "SPLIT_K", "PREFETCH")}
            print(f"{tname:5} {sh:>12} {t_ship or float('nan'):10.1f} {t_xpre or float('nan'):9.1f} {t_q:8.1f} "
                  f"{t_reuse or float('nan'):8.1f} {best_t or float('nan'):8.1f} {gbs:6.0f}  {keys}",
                  flush=True)
            rows.append({"type": tname, "shape": sh, "shipped_us": t_ship, "xpre_us": t_xpre,
                         "quant_us": t_q, "xpre_gemv_us": t_reuse, "best_us": best_t,
                         "best": best, "bytes": nbytes})
            if best_t is not None and t_ship is not None and best_t < t_ship:
                b = tuning.bucket(T=1, N=n, K=k)
                ent = {k2: v for k2, v in best.items() if k2 != "MAX_T"}
                ent["comment"] = (f"{tname} T1 N{n} K{k}: median {best_t:.1f} us with X_PRE, "
                                  f"X_PRE 0 {t_ship:.1f} us (bench_xpre)")
                table["kernels"].setdefault(f"linear_gemv.{tname}", {})[b] = ent
            copies.clear()
            torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.table:
        Path(a.table).write_text(json.dumps(table, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
