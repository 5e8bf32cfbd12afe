"""The decode GEMV with its fusions (matmul.linear norm= / act= / residual=) against the same work
in separate kernels, per Llama-3-8B layer shape, on a GPU (not part of the test suite).

Each row times, in a CUDA graph with the weight rotated through several copies (so it streams
from HBM), one decode-layer piece at batch 1:
- qkv   6144 x 4096: rms_norm + GEMV | the GEMV with NORM | the plain GEMV alone;
- gate_up 28672 x 4096 + act: rms_norm + GEMV + act_mul | NORM + ACT | ACT only | NORM only |
  the plain GEMV alone;
- o 4096 x 4096 and down 4096 x 14336: GEMV + residual add | RESID | the plain GEMV alone.
Medians in microseconds per piece, the fraction of the device's copy bandwidth the fused form
reaches on the weight bytes, and the saving of the fused form over the separate kernels.

    python bench/bench_fused_gemv.py [--types F16,Q8_0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autotune.timing import graph_ms  # noqa: E402
from bench_matmul import copies_for, copy_bandwidth, qtensor_bytes, random_raw  # noqa: E402

PIECES = {"qkv": (6144, 4096), "gate_up": (28672, 4096), "o": (4096, 4096), "down": (4096, 14336)}


def bench(name: str, gen, rep: int) -> list[dict]:
    from forge.kernels import activation, norm
    from forge.kernels import dequant as dq
    from forge.kernels import matmul as mm

    rows = []
    for piece, (N, K) in PIECES.items():
        raw = random_raw(name, N, K, gen)
        first = dq.repack(dq.TYPE_IDS[name], (N, K), raw)
        nbytes = qtensor_bytes(first)
        ws = [first] + [dq.repack(dq.TYPE_IDS[name], (N, K), raw.clone())
                        for _ in range(copies_for(nbytes) - 1)]
        del raw
        x = torch.randn((1, K), device="cuda", generator=gen).to(torch.bfloat16)
        nw = (torch.rand(K, device="cuda", generator=gen) + 0.5)
        n_out = N // 2 if piece == "gate_up" else N
        res = torch.randn((1, n_out), device="cuda", generator=gen).to(torch.bfloat16)
        fused_ok = mm.can_fuse(x, first, norm=piece in ("qkv", "gate_up"))
        it = {"i": 0}

        def w():
            it["i"] = (it["i"] + 1) % len(ws)
            return ws[it["i"]]

        def t(fn):
            return graph_ms([fn] * len(ws), reps=rep) * 1e3    # us per call

        plain = t(lambda: mm.linear(x, w()))
        if piece == "qkv":
            variants = {"separate": lambda: mm.linear(norm.rms_norm(x, nw, 1e-5), w()),
                        "fused": lambda: mm.linear(x, w(), norm=(nw, 1e-5))}
        elif piece == "gate_up":
            variants = {"separate": lambda: activation.act_mul_fused(
                            mm.linear(norm.rms_norm(x, nw, 1e-5), w()), "silu"),
                        "fused": lambda: mm.linear(x, w(), norm=(nw, 1e-5), act="silu"),
                        "act_only": lambda: mm.linear(x, w(), act="silu"),
                        "norm_only": lambda: mm.linear(x, w(), norm=(nw, 1e-5))}
        else:
            variants = {"separate": lambda: mm.linear(x, w()) + res,
                        "fused": lambda: mm.linear(x, w(), residual=res)}
        r = {"type": name, "piece": piece, "N": N, "K": K, "weight_bytes": nbytes,
             "fuses": fused_ok, "plain_us": plain}
        r.update({f"{k}_us": t(fn) for k, fn in variants.items()})
        rows.append(r)
        ws.clear()
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="F16")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fused_gemv: needs a GPU", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    bw = copy_bandwidth()
    rows = []
    for name in a.types.split(","):
        rows += bench(name, gen, a.reps)
    print(f"{torch.cuda.get_device_name()}, copy {bw:.0f} GB/s, batch 1, bf16 x, times in us")
    print(f"{'type':5} {'piece':8} {'N x K':>12} {'fuses':>5} {'separate':>9} {'fused':>8} "
          f"{'plain':>8} {'act only':>8} {'norm only':>9} {'fused %copy':>11} {'saved':>6}")
    for r in rows:
        pct = r["weight_bytes"] / (r["fused_us"] * 1e-6) / (bw * 1e9) * 100
        print(f"{r['type']:5} {r['piece']:8} {r['N']:>6}x{r['K']:<5} {str(r['fuses']):>5} "
              f"{r['separate_us']:9.1f} {r['fused_us']:8.1f} {r['plain_us']:8.1f} "
              f"{r.get('act_only_us', float('nan')):8.1f} {r.get('norm_only_us', float('nan')):9.1f} "
              f"{pct:10.1f}% {r['separate_us'] - r['fused_us']:6.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"copy_gbps": bw, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
