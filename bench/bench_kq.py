"""Batch-decode GEMM for Q4_K / Q6_K weights on a GPU: forge/kernels/kgemm.py against the
other two small-T paths.

For each (type, N x K, T): the general fused dequant GEMM (matmul._linear_gemm_kernel with the
launcher default), dequantize + cuBLAS (matmul._dequant_matmul), and kgemm with its default
config and (--search) the best of a small grid (BLOCK_N, warps, stages, SPLIT_K). CUDA-graph
replay over weight copies rotated through HBM (autotune.timing.graph_ms), median, in us; GB/s
counts the weight bytes. --table writes the best kgemm configs as a tuning table
("linear_kq.<type>" entries).

    python bench/bench_kq.py [--types Q4_K,Q6_K] [--shapes 6144x4096,...] [--T 16,32,64] [--search]
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
from forge.kernels import kgemm, tuning  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402
from forge.kernels.dequant import TYPE_IDS  # noqa: E402

SHAPES = {"Q4_K": ["6144x4096", "4096x4096", "28672x4096", "14336x4096", "4096x14336"],
          "Q6_K": ["4096x14336", "1024x4096", "128256x4096"]}


def _time(fns, reps=30):
    return graph_ms(fns, reps=reps, repeat=max(1, -(-16 // len(fns))), warm_replays=3) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K,Q6_K")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--T", default="16,32,64")
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--table")
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    rows, table = [], {"arch": "sm90", "family": "hopper", "source": "bench_kq", "kernels": {}}
    print(f"{'type':5} {'N x K':>12} {'T':>3} {'gemm us':>8} {'deq+mm us':>9} {'kq us':>7} "
          f"{'best us':>8} {'GB/s':>6} {'x gemm':>6}  best config", flush=True)
    for tname in a.types.split(","):
        tid = TYPE_IDS[tname]
        for sh in (a.shapes.split(",") if a.shapes else SHAPES[tname]):
            n, k = (int(v) for v in sh.split("x"))
            w, _ = _qweight(torch, tname, n, k, dev)
            nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
            copies = _rotations(w, cap=31)
            for T in (int(t) for t in a.T.split(",")):
                x = torch.randn(T, k, device=dev, dtype=torch.bfloat16)
                out = torch.empty(T, n, device=dev, dtype=torch.bfloat16)
                ref = x.float() @ mm.dequantize(w, dtype=torch.float32).t()
                gm = mm.gemm_default(tid, T, n, k, "nvidia")

                def gemm(c):
                    with tuning.override({f"linear_gemm.{tname}": {"*": dict(gm, DEQUANT_T=0,
                                                                             KQ_T=0)}}):
                        mm.clear_config_cache()
                        mm.linear(x, c, out=out)

                def check(y):
                    err = float((y.float() - ref).norm() / ref.norm())
                    return err < 2e-2, err

                def t_of(fns):
                    try:
                        return _time(fns)
                    except Exception as e:  # noqa: BLE001
                        print(f"   {type(e).__name__}: {str(e)[:120]}")
                        return None

                gemm(w)
                ok, err = check(out)
                t_gemm = t_of([lambda c=c: gemm(c) for c in copies]) if ok else None
                mm.clear_config_cache()
                t_deq = t_of([lambda c=c: mm._dequant_matmul(x, c, out) for c in copies])

                def kq(cfg):
                    kgemm.linear(x, w, None, out, cfg)
                    ok, err = check(out)
                    if not ok:
                        print(f"   {cfg}: relative error {err:.2e}")
                        return None
                    return t_of([lambda c=c: kgemm.linear(x, c, None, out, cfg) for c in copies])

                base = kgemm.kq_default(tid, T, n, k)
                t_kq = kq(base)
                best, best_t = base, t_kq
                if a.search:
                    for bn, nw, ns, sp in itertools.product((64, 128), (4, 8), (2, 3),
                                                            (1, 2, 4, 8)):
                        cfg = dict(base, BLOCK_N=bn, num_warps=nw, num_stages=ns, SPLIT_K=sp)
                        if cfg == base:
                            continue
                        t = kq(cfg)
                        if t is not None and (best_t is None or t < best_t):
                            best, best_t = cfg, t
                gbs = nbytes / (best_t * 1e-6) / 1e9 if best_t else float("nan")
                nan = float("nan")
                ratio = (t_gemm / best_t) if (t_gemm and best_t) else nan
                print(f"{tname:5} {sh:>12} {T:3d} {t_gemm or nan:8.1f} {t_deq or nan:9.1f} "
                      f"{t_kq or nan:7.1f} {best_t or nan:8.1f} {gbs:6.0f} {ratio:6.2f}  "
                      f"{ {kk: best[kk] for kk in ('BLOCK_N', 'num_warps', 'num_stages', 'SPLIT_K')} }",
                      flush=True)
                rows.append({"type": tname, "shape": sh, "T": T, "gemm_us": t_gemm,
                             "dequant_mm_us": t_deq, "kq_us": t_kq, "best_us": best_t,
                             "best": best, "bytes": nbytes})
                if a.search and best_t is not None and best != base:
                    b = tuning.bucket(T=T, N=n, K=k)
                    table["kernels"].setdefault(f"linear_kq.{tname}", {})[b] = dict(
                        best, comment=f"{tname} T{T} N{n} K{k}: median {best_t:.1f} us, default "
                                      f"{t_kq or nan:.1f} us (bench_kq --search)")
            copies.clear()
            torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.table:
        Path(a.table).write_text(json.dumps(table, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
