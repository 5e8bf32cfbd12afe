"""Microbenchmark: forge paged attention vs torch scaled_dot_product_attention (GPU only).

    python bench/bench_attention.py [--graph] [--dtype bf16|fp16]

Llama-3-8B heads: 32 query heads, 8 KV heads, head dim 128, cache block size 16 with shuffled
block ids.
- decode: batch 1 and 32 at contexts 512, 4096, 32768. Metric: KV bytes read / time (GB/s).
  torch reference: SDPA of one query over a contiguous [B, Hkv, ctx, D] K/V (enable_gqa), the
  same bytes without paging.
- prefill: one causal sequence of 512, 2048, 8192 tokens. Metric: TFLOP/s with
  FLOPs = 4 * H * D * N(N+1)/2 (QK^T and PV over the causal triangle), the same count for both.
  torch reference: SDPA is_causal over contiguous [1, H, N, D] (K/V expanded to H heads so the
  flash backend applies).
Times are medians of triton.testing.do_bench (or do_bench_cudagraph with --graph).
"vs sdpa" = SDPA time / forge time (above 1: forge is faster).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

H, HKV, D, BS = 32, 8, 128, 16


def paged_cache(total_tokens_per_seq: list[int], dtype, device, gen):
    """Random K/V in a paged cache with shuffled block ids; returns (k, v, block_tables)."""
    nblk = [-(-n // BS) for n in total_tokens_per_seq]
    nb = 1 + sum(nblk)
    ids = torch.randperm(nb - 1, generator=gen, device="cpu")[: sum(nblk)] + 1
    W = max(nblk)
    bt = torch.zeros((len(nblk), W), dtype=torch.int32)
    used = 0
    for b, n in enumerate(nblk):
        bt[b, :n] = ids[used:used + n].to(torch.int32)
        used += n
    k = torch.randn((nb, BS, HKV, D), dtype=dtype, device=device)
    v = torch.randn((nb, BS, HKV, D), dtype=dtype, device=device)
    return k, v, bt.to(device)


def bench(fn, graph: bool) -> float:
    """Median milliseconds."""
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    if graph:
        return tt.do_bench_cudagraph(fn, return_mode="median")
    return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", action="store_true", help="time under a CUDA/HIP graph")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA or ROCm GPU; nothing to do")
        return
    from forge.kernels.attention import attention
    import torch.nn.functional as F

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    dev = "cuda"
    gen = torch.Generator().manual_seed(0)
    scale = D ** -0.5
    esz = torch.finfo(dtype).bits // 8
    print(f"# {torch.cuda.get_device_name()}  {args.dtype}  H={H} Hkv={HKV} D={D} block={BS}"
          f"  timing={'cudagraph' if args.graph else 'do_bench'} (median)")

    # ---- decode ---------------------------------------------------------------------------
    print("\n## decode (one query per sequence)")
    print(f"{'batch':>5} {'ctx':>6} | {'forge us':>9} {'GB/s':>7} | {'sdpa us':>9} {'GB/s':>7} | "
          f"{'vs sdpa':>10}")
    for batch in (1, 32):
        for ctx in (512, 4096, 32768):
            k, v, bt = paged_cache([ctx] * batch, dtype, dev, gen)
            q = torch.randn((batch, H * D), dtype=dtype, device=dev)
            qsl = torch.arange(batch + 1, dtype=torch.int32, device=dev)
            sl = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
            out = torch.empty_like(q)

            def ours():
                attention(q, k, v, qsl, sl, bt, H, HKV, scale, max_query_len=1, max_seq_len=ctx,
                          out=out)

            t_ours = bench(ours, args.graph)
            del k, v
            kd = torch.randn((batch, HKV, ctx, D), dtype=dtype, device=dev)
            vd = torch.randn((batch, HKV, ctx, D), dtype=dtype, device=dev)
            qd = q.view(batch, H, 1, D)

            def ref():
                F.scaled_dot_product_attention(qd, kd, vd, scale=scale, enable_gqa=True)

            try:
                t_ref = bench(ref, args.graph)
            except Exception as e:  # an SDPA build without enable_gqa
                print(f"  (sdpa failed: {e})")
                t_ref = float("nan")
            del kd, vd
            nbytes = 2 * batch * ctx * HKV * D * esz
            gbs = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
            print(f"{batch:>5} {ctx:>6} | {t_ours * 1e3:>9.1f} {gbs(t_ours):>7.0f} | "
                  f"{t_ref * 1e3:>9.1f} {gbs(t_ref):>7.0f} | {t_ref / t_ours:>10.2f}")
            torch.cuda.empty_cache()

    # ---- prefill --------------------------------------------------------------------------
    print("\n## prefill (one causal sequence)")
    print(f"{'tokens':>6} | {'forge us':>9} {'TFLOP/s':>8} | {'sdpa us':>9} {'TFLOP/s':>8} | "
          f"{'vs sdpa':>10}")
    for n in (512, 2048, 8192):
        k, v, bt = paged_cache([n], dtype, dev, gen)
        q = torch.randn((n, H * D), dtype=dtype, device=dev)
        qsl = torch.tensor([0, n], dtype=torch.int32, device=dev)
        sl = torch.tensor([n], dtype=torch.int32, device=dev)
        out = torch.empty_like(q)

        def ours():
            attention(q, k, v, qsl, sl, bt, H, HKV, scale, max_query_len=n, max_seq_len=n,
                      out=out)

        t_ours = bench(ours, args.graph)
        # the same K/V, contiguous and expanded to H heads for SDPA
        kk = k[bt[0].long()].reshape(-1, HKV, D)[:n]
        vv = v[bt[0].long()].reshape(-1, HKV, D)[:n]
        qd = q.view(n, H, D).transpose(0, 1).unsqueeze(0).contiguous()
        kd = kk.repeat_interleave(H // HKV, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
        vd = vv.repeat_interleave(H // HKV, dim=1).transpose(0, 1).unsqueeze(0).contiguous()

        def ref():
            F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale)

        t_ref = bench(ref, args.graph)
        # sanity: the two agree
        want = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale)
        want = want[0].transpose(0, 1).reshape(n, H * D)
        ours()
        err = (out.float() - want.float()).abs().max().item()
        flops = 4.0 * H * D * n * (n + 1) / 2
        tf = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
        print(f"{n:>6} | {t_ours * 1e3:>9.1f} {tf(t_ours):>8.1f} | {t_ref * 1e3:>9.1f} "
              f"{tf(t_ref):>8.1f} | {t_ref / t_ours:>10.2f}   (max |diff| {err:.1e})")
        del k, v, kd, vd, qd
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
