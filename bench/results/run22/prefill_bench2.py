"""Run 22 call 2: why the contiguous tutorial-style kernel (run21/prefill_bench.py fa_fwd) beats
forge's paged prefill (2048 tokens: 325 vs 274 TFLOP/s in call 1). forge variants over HT (query
heads packed per tile: 4 = whole GQA group, forge's default; 1 = one head per tile, as the
tutorial), tiles, warps and stages, at cache blocks 16 and 128; the tutorial and SDPA again as
same-session references. 32 q heads, 8 kv heads, d128, bf16, one causal sequence."""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.getcwd())
spec = importlib.util.spec_from_file_location(
    "pb", os.path.join(os.path.dirname(__file__), "..", "run21", "prefill_bench.py"))
pb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pb)
from forge.kernels import tuning  # noqa: E402
from forge.kernels import attention as A  # noqa: E402

H, HKV, D, dt, dev = pb.H, pb.HKV, pb.D, pb.dt, "cuda"
NS = pb.NS
bench, tflops = pb.bench, pb.tflops


def last_kernel_info(fn):
    try:
        for cache in fn.device_caches.values():
            ks = [k for k in cache[0].values() if hasattr(k, "n_regs")]
            if ks:
                k = ks[-1]
                return f"regs={k.n_regs} spills={k.n_spills} smem={k.metadata.shared}"
    except Exception as e:  # noqa: BLE001
        return f"info? {type(e).__name__}"
    return "info?"


def forge_case(n, bs, gen):
    nb = -(-n // bs)
    ids = torch.randperm(nb, generator=gen) + 1
    bt = ids.to(torch.int32).view(1, -1).to(dev)
    kc = torch.randn(nb + 1, bs, HKV, D, dtype=dt, device=dev)
    vc = torch.randn(nb + 1, bs, HKV, D, dtype=dt, device=dev)
    q = torch.randn(n, H * D, dtype=dt, device=dev)
    qsl = torch.tensor([0, n], dtype=torch.int32, device=dev)
    sl = torch.tensor([n], dtype=torch.int32, device=dev)
    return q, kc, vc, qsl, sl, bt, torch.empty_like(q)


def ref_err(n, q, kc, vc, bt, out):
    bs = kc.shape[1]
    ids = bt[0].long()
    k = kc[ids].reshape(-1, HKV, D)[:n]
    v = vc[ids].reshape(-1, HKV, D)[:n]
    qd = q.view(n, H, D).transpose(0, 1)[None]
    kd = k.transpose(0, 1)[None].repeat_interleave(H // HKV, 1)
    vd = v.transpose(0, 1)[None].repeat_interleave(H // HKV, 1)
    ref = F.scaled_dot_product_attention(qd.float(), kd.float(), vd.float(), is_causal=True)
    ref = ref[0].transpose(0, 1).reshape(n, H * D)
    del bs
    return (out.float() - ref).abs().max().item()


def run_forge():
    print("\n## forge paged prefill: HT x tiles (TFLOP/s)")
    gen = torch.Generator().manual_seed(0)
    tiles = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 4, 2),
             (128, 64, 4, 3)]
    data = {(n, bs): forge_case(n, bs, gen) for n in NS for bs in (16, 128)}
    for bs in (16, 128):
        for ht in (4, 2, 1):
            for (bm, bn, w, s) in tiles:
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, SINGLE_LOOP=0,
                           QK_CHUNK=0, HT=ht)
                row, info = [], ""
                try:
                    with tuning.override({"attn_prefill": {"*": cfg}}):
                        A.clear_config_cache()
                        for n in NS:
                            q, kc, vc, qsl, sl, bt, out = data[(n, bs)]
                            f = lambda: A.attention(q, kc, vc, qsl, sl, bt, H, HKV, D ** -0.5,  # noqa: E731
                                                    max_query_len=n, max_seq_len=n, out=out)
                            ms = bench(f)
                            if not info:
                                info = last_kernel_info(A._attn_prefill_kernel)
                                info += f" err={ref_err(n, q, kc, vc, bt, out):.1e}"
                            row.append(tflops(n, ms))
                    print(f"bs{bs:<4d} HT{ht} BM{bm:<3d} BN{bn:<3d} w{w} s{s}  "
                          + " ".join(f"{x:6.1f}" for x in row) + "  " + info, flush=True)
                except Exception as e:  # noqa: BLE001
                    msg = str(e).splitlines()[0][:120] if str(e) else ""
                    print(f"bs{bs:<4d} HT{ht} BM{bm:<3d} BN{bn:<3d} w{w} s{s}  ERR {type(e).__name__}: {msg}",
                          flush=True)
    A.clear_config_cache()


def run_ref():
    print("\n## references (TFLOP/s): SDPA default (cuDNN), tutorial fa_fwd")
    import triton
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    row = []
    for n in NS:
        q = torch.randn(1, H, n, D, dtype=dt, device=dev)
        k = torch.randn(1, H, n, D, dtype=dt, device=dev)
        v = torch.randn(1, H, n, D, dtype=dt, device=dev)
        row.append(tflops(n, bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))))
    print("sdpa                          " + " ".join(f"{x:6.1f}" for x in row))
    for (bm, bn, w, s, tma) in ((64, 64, 4, 3, False), (128, 128, 8, 3, True), (64, 64, 4, 3, True)):
        row = []
        for n in NS:
            q = torch.randn(n, H * D, dtype=dt, device=dev)
            k = torch.randn(n, HKV * D, dtype=dt, device=dev)
            v = torch.randn(n, HKV * D, dtype=dt, device=dev)
            o = torch.empty_like(q)
            f = lambda: pb.fa_fwd[(n // bm, H)](q, k, v, o, n, D ** -0.5 * 1.4426950408889634,  # noqa: E731
                                                H=H, HKV=HKV, D=D, BM=bm, BN=bn, TMA=tma, WS=False,
                                                num_warps=w, num_stages=s)
            row.append(tflops(n, bench(f)))
        print(f"tutorial BM{bm} BN{bn} w{w} s{s} TMA{int(tma)} " + " ".join(f"{x:6.1f}" for x in row),
              flush=True)


if __name__ == "__main__":
    for w in sys.argv[1:] or ["ref", "forge"]:
        {"ref": run_ref, "forge": run_forge}[w]()
