"""One `linear` call of a given type and shape, repeated, for Nsight Compute to profile:

    ncu --clock-control none --kernel-name regex:_linear_ --launch-skip 3 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
        --section Occupancy python bench/ncu_linear.py --type Q4_K --shape 4096x14336 -T 1

Random GGUF blocks (bench_matmul.random_raw), bf16 x, the launcher's shipped config for this
GPU. Prints the config it used, so a profile can be tied to a table entry.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matmul import SHAPES, random_raw  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--type", default="Q4_K")
    ap.add_argument("--shape", default="4096x14336", help=f"N x K, one of {list(SHAPES)} or NxK")
    ap.add_argument("-T", type=int, default=1, help="token rows")
    ap.add_argument("--calls", type=int, default=6)
    a = ap.parse_args(argv)
    from forge.kernels import dequant as dq
    from forge.kernels import matmul as mm

    N, K = SHAPES.get(a.shape) or tuple(int(v) for v in a.shape.split("x"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    tid = dq.TYPE_IDS[a.type]
    qt = dq.repack(tid, (N, K), random_raw(a.type, N, K, gen))
    x = (torch.randn((a.T, K), device="cuda", generator=gen)).to(torch.bfloat16)
    gv, gm = mm._configs(tid, a.T, N, K)
    print(f"{a.type} N={N} K={K} T={a.T}: gemv {gv}\ngemm {gm}", flush=True)
    for _ in range(a.calls):
        mm.linear(x, qt)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
