"""Microbenchmark: forge's small ops vs torch eager equivalents (GPU only).

    python bench/bench_small_ops.py [--graph] [--dtype bf16|fp16]

Llama-3-8B shapes (hidden 4096, 32 query / 8 KV heads of 128, FFN 14336, vocab 128256), for
T = 1 and T = 512 tokens:
- rms_norm (weight fp32) and rms_norm fused with the residual add;
- rope (llama3 "norm" style with rope_freqs) fused with the paged KV write (block size 16,
  slots spread over a shuffled cache);
- act_mul SiLU on a fused [T, 2F] gate_up;
- embed from a Q4_K table (what Q4_K_M files carry) and from an F16 table.
Metric: bytes that must move (inputs read + outputs written) / median time, in GB/s; the torch
reference gets the same byte count for the same logical work (for embed, torch gathers from a
dense table of the activation dtype: its own bytes are counted).
sample(): latency at batch 1 and 32 with vocab 128256 for greedy, temperature only,
top-k 50 + top-p 0.9, min-p 0.05 and the penalties on 256 history tokens. torch reference:
the vLLM-style eager sampler (sort for top-k/top-p, softmax, exponential-race draw; penalties by
scatter). Times are medians of triton.testing.do_bench (or do_bench_cudagraph with --graph).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

D, H, HKV, DH, F_FFN, VOCAB, BS = 4096, 32, 8, 128, 14336, 128256, 16


def bench(fn, graph: bool) -> float:
    """Median milliseconds."""
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    if graph:
        return tt.do_bench_cudagraph(fn, return_mode="median")
    return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")


def row(name: str, t: int, nbytes: float, ms_ours: float, ms_ref: float) -> None:
    gbs = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    print(f"{name:<22} {t:>5} | {ms_ours * 1e3:>9.1f} {gbs(ms_ours):>7.0f} | {ms_ref * 1e3:>9.1f} "
          f"{gbs(ms_ref):>7.0f} | {ms_ref / ms_ours:>8.2f}")


# ---- torch eager references --------------------------------------------------------------------


def torch_rms_norm(x, w, eps, residual=None):
    h = x if residual is None else x + residual
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype)
    return y if residual is None else (y, h)


def torch_rope_kv(q, k, v, pos, kc, vc, slots, inv_freq):
    t = q.shape[0]
    ang = pos.float()[:, None] * inv_freq[None, :]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rot(x, nh):
        x = x.view(t, nh, DH).float()
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).reshape(t, nh, DH)

    qo = rot(q, H).to(q.dtype).reshape(t, H * DH)
    kc.view(-1, HKV, DH).index_copy_(0, slots, rot(k, HKV).to(kc.dtype))
    vc.view(-1, HKV, DH).index_copy_(0, slots, v.view(t, HKV, DH))
    return qo


def torch_sample(logits, temp, top_k, top_p, min_p, rep, pres, freq, prompt, output, greedy):
    """vLLM-v1-like eager sampler (penalties, temperature, top-k/top-p by sort, min-p,
    exponential race)."""
    x = logits.float().clone()
    s, v = x.shape
    if prompt is not None:
        hist = torch.zeros((s, v + 1), dtype=torch.bool, device=x.device)
        hist.scatter_(1, torch.where(prompt < 0, v, prompt).long(), True)
        hist.scatter_(1, torch.where(output < 0, v, output).long(), True)
        cnt = torch.zeros((s, v + 1), dtype=torch.int32, device=x.device)
        cnt.scatter_add_(1, torch.where(output < 0, v, output).long(), torch.ones_like(output))
        hist, cnt = hist[:, :v], cnt[:, :v]
        r = rep[:, None].expand_as(x)
        x = torch.where(hist, torch.where(x > 0, x / r, x * r), x)
        x = x - freq[:, None] * cnt - pres[:, None] * (cnt > 0)
    if greedy:
        return x.argmax(dim=-1)
    x = x / temp[:, None]
    srt, idx = x.sort(dim=-1, descending=False)
    kth = srt.gather(1, (v - top_k.clamp(1, v)).long()[:, None])
    srt = srt.masked_fill(srt < kth, float("-inf"))
    p = srt.softmax(dim=-1)
    cum = p.cumsum(dim=-1)
    drop = cum <= 1 - top_p[:, None]
    drop[:, -1] = False
    srt = srt.masked_fill(drop, float("-inf"))
    x = torch.empty_like(x).scatter_(1, idx, srt)
    probs = x.softmax(dim=-1)
    probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(-1, keepdim=True), 0.0)
    q = torch.empty_like(probs).exponential_()
    return (probs / q).argmax(dim=-1)


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", action="store_true", help="time under a CUDA/HIP graph")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_small_ops: needs a CUDA or ROCm GPU; nothing to do")
        return
    from forge.kernels import dequant
    from forge.kernels.activation import act_mul_fused
    from forge.kernels.embedding import embed
    from forge.kernels.norm import rms_norm
    from forge.kernels.rope import rope
    from forge.kernels.sampling import sample
    from forge.runtime.backend import RopeSpec, SamplingBatch

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = "cuda"
    esz = 2
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    g = args.graph
    print(f"# {torch.cuda.get_device_name()}  {args.dtype}  Llama-3-8B shapes  "
          f"timing={'cudagraph' if g else 'do_bench'} (median)")
    print(f"\n{'op':<22} {'T':>5} | {'forge us':>9} {'GB/s':>7} | {'torch us':>9} {'GB/s':>7} | "
          f"{'speedup':>8}")

    for t in (1, 512):
        # rms_norm
        x = torch.randn(t, D, dtype=dt, device=dev)
        r = torch.randn(t, D, dtype=dt, device=dev)
        w = torch.randn(D, device=dev)
        row("rms_norm", t, 2 * t * D * esz + 4 * D, bench(lambda: rms_norm(x, w, 1e-5), g),
            bench(lambda: torch_rms_norm(x, w, 1e-5), g))
        row("rms_norm+residual", t, 4 * t * D * esz + 4 * D,
            bench(lambda: rms_norm(x, w, 1e-5, residual=r), g),
            bench(lambda: torch_rms_norm(x, w, 1e-5, residual=r), g))

        # rope + KV write
        nb = max(64, 4 * t // BS + 8)
        kc = torch.zeros(nb, BS, HKV, DH, dtype=dt, device=dev)
        vc = torch.zeros_like(kc)
        slots = torch.randperm(nb * BS, device=dev)[:t]
        pos = torch.randint(0, 8192, (t,), device=dev, dtype=torch.int32)
        qkv = torch.randn(t, (H + 2 * HKV) * DH, dtype=dt, device=dev)
        q, k, v = qkv.split([H * DH, HKV * DH, HKV * DH], dim=1)
        ff = torch.rand(DH // 2, device=dev) * 7 + 1
        spec = RopeSpec(DH, 500000.0, "norm", 1.0, ff)
        inv = (500000.0 ** (-torch.arange(0, DH, 2, device=dev).float() / DH)) / ff
        nbytes = t * (H + 2 * HKV) * DH * esz + t * (H + 2 * HKV) * DH * esz + 12 * t
        row("rope+kv_write", t, nbytes,
            bench(lambda: rope(q, k, v, pos, kc, vc, slots, spec, H, HKV, DH), g),
            bench(lambda: torch_rope_kv(q, k, v, pos, kc, vc, slots, inv), g))

        # act_mul
        gu = torch.randn(t, 2 * F_FFN, dtype=dt, device=dev)
        gate, up = gu[:, :F_FFN], gu[:, F_FFN:]
        row("act_mul silu", t, 3 * t * F_FFN * esz, bench(lambda: act_mul_fused(gu, "silu"), g),
            bench(lambda: torch.nn.functional.silu(gate) * up, g))
        del x, r, kc, vc, qkv, gu

    # embed: Q4_K table (random blocks with sane scales) and F16 table
    nbk = D // 256
    blk = rng.integers(0, 256, (VOCAB, nbk, 144), dtype=np.uint8)
    for off in (0, 2):
        d = (np.exp2(rng.uniform(-12, -4, (VOCAB, nbk)))).astype(np.float16)
        blk[:, :, off:off + 2] = d.view(np.uint8).reshape(VOCAB, nbk, 2)
    q4k = dequant.repack(12, (VOCAB, D), torch.from_numpy(blk.reshape(VOCAB, -1)).to(dev))
    f16raw = torch.randn(VOCAB, D, dtype=torch.float16, device=dev)
    f16 = dequant.repack(1, (VOCAB, D), f16raw)
    dense = f16raw.to(dt)
    for t in (1, 512):
        ids = torch.randint(0, VOCAB, (t,), device=dev)
        row("embed Q4_K", t, t * (D // 256 * 144 + D * esz),
            bench(lambda: embed(q4k, ids, dtype=dt), g),
            bench(lambda: torch.nn.functional.embedding(ids, dense), g))
        row("embed F16", t, t * (D * 2 + D * esz),
            bench(lambda: embed(f16, ids, dtype=dt), g),
            bench(lambda: torch.nn.functional.embedding(ids, dense), g))
    del q4k, f16, f16raw, dense

    # sample
    print(f"\n{'sample (V=128256)':<34} {'S':>3} | {'forge us':>9} | {'torch us':>9} | {'speedup':>8}")
    for s in (1, 32):
        logits = torch.randn(s, VOCAB, device=dev) * 3
        prompt = torch.randint(0, VOCAB, (s, 192), device=dev, dtype=torch.int32)
        output = torch.randint(0, VOCAB, (s, 64), device=dev, dtype=torch.int32)
        none = torch.zeros((s, 0), dtype=torch.int32, device=dev)

        def sb(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, pen=False, greedy=False):
            f = lambda val, dtp=torch.float32: torch.full((s,), val, dtype=dtp, device=dev)  # noqa: E731
            return SamplingBatch(
                temperature=f(0.0 if greedy else temp), top_k=f(top_k, torch.int32), top_p=f(top_p),
                min_p=f(min_p), repetition_penalty=f(1.1 if pen else 1.0), presence_penalty=f(0.5 if pen else 0.0),
                frequency_penalty=f(0.2 if pen else 0.0), seeds=torch.arange(s, device=dev),
                steps=torch.zeros(s, dtype=torch.int64, device=dev),
                prompt_tokens=prompt if pen else none, output_tokens=output if pen else none,
                all_greedy=greedy)

        cases = [("greedy", dict(greedy=True)), ("temperature 0.8", dict(temp=0.8)),
                 ("top-k 50 + top-p 0.9", dict(top_k=50, top_p=0.9)),
                 ("top-p 0.95", dict(top_p=0.95)), ("min-p 0.05", dict(min_p=0.05)),
                 ("top-p 0.9 + penalties", dict(top_p=0.9, pen=True))]
        for name, kw in cases:
            b = sb(**kw)
            tk = torch.full((s,), kw.get("top_k", 0) or VOCAB, device=dev)
            t_ours = bench(lambda: sample(logits, b), g)
            t_ref = bench(lambda: torch_sample(
                logits, b.temperature, tk, b.top_p, b.min_p, b.repetition_penalty,
                b.presence_penalty, b.frequency_penalty, prompt if kw.get("pen") else None,
                output if kw.get("pen") else None, kw.get("greedy", False)), g)
            print(f"{name:<34} {s:>3} | {t_ours * 1e3:>9.1f} | {t_ref * 1e3:>9.1f} | "
                  f"{t_ref / t_ours:>8.2f}")
    # a case that takes the bisection fallback (top-k larger than the candidate buffer)
    logits = torch.randn(32, VOCAB, device=dev) * 3
    b = SamplingBatch(
        temperature=torch.ones(32, device=dev), top_k=torch.full((32,), 8000, dtype=torch.int32, device=dev),
        top_p=torch.ones(32, device=dev), min_p=torch.zeros(32, device=dev),
        repetition_penalty=torch.ones(32, device=dev), presence_penalty=torch.zeros(32, device=dev),
        frequency_penalty=torch.zeros(32, device=dev), seeds=torch.arange(32, device=dev),
        steps=torch.zeros(32, dtype=torch.int64, device=dev),
        prompt_tokens=torch.zeros((32, 0), dtype=torch.int32, device=dev),
        output_tokens=torch.zeros((32, 0), dtype=torch.int32, device=dev))
    print(f"{'top-k 8000 (bisection fallback)':<34} {32:>3} | {bench(lambda: sample(logits, b), g) * 1e3:>9.1f} |")


if __name__ == "__main__":
    main()
