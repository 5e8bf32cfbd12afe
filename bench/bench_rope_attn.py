"""Microbenchmark: decode attention with the rope fused in vs the rope kernel + attention (GPU).

    python bench/bench_rope_attn.py [--ctx 64 512 4096] [--batch 1 32] [--json PATH]

Per layer inside a CUDA graph of L layers (each with its own cache), as a decode step runs them
(PDL on where the engine has it): "rope+attn" = rope.rope then attention (two launches),
"fused" = attention(..., rope=...) (one launch), "attn only" = attention on an already rotated q
with the key in the cache (the lower bound the fused kernel approaches). Shapes: Llama-3-8B
heads (32 / 8, head dim 128) and Llama-3.2-1B (32 / 8, head dim 64), bf16, the query at
position ctx - 1. Also with xq=(4, 8) (the output quantized for an X_PRE o projection, as in
the Q4_K_M models). Medians over 20 replays (autotune.timing.graph_ms).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autotune.timing import graph_ms  # noqa: E402

BS = 16
SHAPES = {"8b": (32, 8, 128), "1b": (32, 8, 64)}


class Case:
    def __init__(self, shape: str, batch: int, ctx: int, layers: int, gen, xq):
        from forge.kernels import rope as rope_mod
        from forge.runtime.backend import RopeSpec

        self.H, self.HKV, self.D = H, HKV, D = SHAPES[shape]
        dev, dt = "cuda", torch.bfloat16
        self.batch, self.ctx, self.xq = batch, ctx, xq
        nblk = -(-ctx // BS)
        nb = 1 + batch * nblk
        self.layers = []
        for _ in range(layers):
            k = torch.randn((nb, BS, HKV, D), dtype=dt, device=dev, generator=gen)
            v = torch.randn((nb, BS, HKV, D), dtype=dt, device=dev, generator=gen)
            ids = torch.randperm(nb - 1, generator=gen, device=dev)[: batch * nblk] + 1
            bt = ids.view(batch, nblk).to(torch.int32).contiguous()
            self.layers.append((k, v, bt))
        self.qkv = torch.randn((batch, (H + 2 * HKV) * D), dtype=dt, device=dev, generator=gen)
        self.q, self.k, self.v = self.qkv.split([H * D, HKV * D, HKV * D], dim=1)
        self.qsl = torch.arange(batch + 1, dtype=torch.int32, device=dev)
        self.sl = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
        self.pos = torch.full((batch,), ctx - 1, dtype=torch.int32, device=dev)
        self.spec = RopeSpec(rot_dim=D, base=500000.0, style="norm")
        self.slots = [(bt[:, (ctx - 1) // BS].to(torch.int64) * BS + (ctx - 1) % BS).contiguous()
                      for _, _, bt in self.layers]
        self.out = torch.empty((batch, H * D), dtype=dt, device=dev)
        self.rope_mod = rope_mod

    def fns(self, mode: str):
        from forge.kernels.attention import attention

        H, HKV, D = self.H, self.HKV, self.D
        rm = self.rope_mod

        def make(i):
            k, v, bt = self.layers[i]
            kw = dict(max_query_len=1, max_seq_len=4096 if self.ctx <= 4096 else self.ctx,
                      out=self.out, xq=self.xq)
            if mode == "fused":
                def f():
                    fa = rm.fused_args(self.q, self.k, self.v, self.pos, k, v, self.slots[i],
                                       self.spec, H, HKV, D)
                    attention(self.q, k, v, self.qsl, self.sl, bt, H, HKV, D ** -0.5, rope=fa, **kw)
            elif mode == "rope+attn":
                def f():
                    q = rm.rope(self.q, self.k, self.v, self.pos, k, v, self.slots[i], self.spec,
                                H, HKV, D)
                    attention(q, k, v, self.qsl, self.sl, bt, H, HKV, D ** -0.5, **kw)
            else:
                def f():
                    attention(self.q, k, v, self.qsl, self.sl, bt, H, HKV, D ** -0.5, **kw)
            return f
        return [make(i) for i in range(len(self.layers))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    print(f"{'shape':>5} {'batch':>5} {'ctx':>5} {'xq':>5} | {'rope+attn us':>12} {'fused us':>9} "
          f"{'attn only us':>12} | {'saved us':>8} {'fused/2-launch':>14}")
    for shape in SHAPES:
        for batch in a.batch:
            for ctx in a.ctx:
                for xq in (None, (4, 8)):
                    c = Case(shape, batch, ctx, a.layers, gen, xq)
                    t = {m: graph_ms(c.fns(m)) * 1e3
                         for m in ("rope+attn", "fused", "attn only")}
                    rows.append(dict(shape=shape, batch=batch, ctx=ctx, xq=bool(xq), **t))
                    print(f"{shape:>5} {batch:>5} {ctx:>5} {'yes' if xq else 'no':>5} | "
                          f"{t['rope+attn']:>12.2f} {t['fused']:>9.2f} {t['attn only']:>12.2f} | "
                          f"{t['rope+attn'] - t['fused']:>8.2f} {t['fused'] / t['rope+attn']:>14.3f}")
                    del c
                    torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
