"""Research bench (not part of forge): SDPA backends, forge paged prefill at several cache
block sizes, and a contiguous tutorial-style causal FA kernel (TMA vs pointers, warp_specialize)
on the same shape: 32 q heads, 8 kv heads, d128, bf16, one causal sequence."""
import os, sys, time, traceback
import torch
import triton
import triton.language as tl
import triton.testing as tt

sys.path.insert(0, os.getcwd())
H, HKV, D = 32, 8, 128
dt = torch.bfloat16
dev = "cuda"
NS = [int(x) for x in os.environ.get("NS", "512,2048,8192").split(",")]
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")

def bench(fn):
    fn(); torch.cuda.synchronize()
    return tt.do_bench(fn, warmup=25, rep=200, return_mode="median")

def tflops(n, ms):
    return 4.0 * H * D * n * (n + 1) / 2 / (ms * 1e-3) / 1e12

# ---------------------------------------------------------------- SDPA backends
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
def run_sdpa():
    print("\n## SDPA (MHA-expanded K/V, is_causal)")
    for n in NS:
        q = torch.randn(1, H, n, D, dtype=dt, device=dev)
        k = torch.randn(1, H, n, D, dtype=dt, device=dev)
        v = torch.randn(1, H, n, D, dtype=dt, device=dev)
        kg = k[:, ::4].contiguous(); vg = v[:, ::4].contiguous()
        row = []
        for name, be in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                         ("cudnn", SDPBackend.CUDNN_ATTENTION),
                         ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            try:
                if be is None:
                    f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    ms = bench(f)
                else:
                    with sdpa_kernel([be]):
                        f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        ms = bench(f)
                row.append(f"{name} {tflops(n, ms):6.1f}")
            except Exception as e:
                row.append(f"{name} ERR({type(e).__name__})")
        try:
            f = lambda: F.scaled_dot_product_attention(q, kg, vg, is_causal=True, enable_gqa=True)
            row.append(f"default+gqa {tflops(n, bench(f)):6.1f}")
        except Exception as e:
            row.append(f"gqa ERR({type(e).__name__}: {str(e)[:60]})")
        print(f"N={n:5d}  " + " | ".join(row))
    # FA3 impl in torch, if this build has it
    try:
        from torch.nn.attention import activate_flash_attention_impl
        activate_flash_attention_impl("FA3")
        print("FA3 impl activated")
    except Exception as e:
        print("no FA3 impl switch:", type(e).__name__, str(e)[:80])

# ---------------------------------------------------------------- forge paged prefill
def run_forge():
    from forge.kernels.attention import attention
    from forge.kernels import tuning
    print("\n## forge _attn_prefill_kernel (paged)")
    gen = torch.Generator().manual_seed(0)
    variants = [("bs16 shuffled default", 16, True, None),
                ("bs16 sequential default", 16, False, None),
                ("bs64 shuffled default", 64, True, None),
                ("bs128 shuffled default", 128, True, None),
                ("bs128 BN128 w8 s2", 128, True, dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, SINGLE_LOOP=0, QK_CHUNK=0)),
                ("bs16 BN128 w8 s2", 16, True, dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, SINGLE_LOOP=0, QK_CHUNK=0)),
                ("bs64 BM64 BN64 w4 s3", 64, True, dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, SINGLE_LOOP=0, QK_CHUNK=0)),
                ]
    for name, bs, shuf, cfg in variants:
        row = []
        for n in NS:
            nb = -(-n // bs)
            ids = (torch.randperm(nb, generator=gen) + 1) if shuf else torch.arange(1, nb + 1)
            bt = ids.to(torch.int32).view(1, -1).to(dev)
            kc = torch.randn(nb + 1, bs, HKV, D, dtype=dt, device=dev)
            vc = torch.randn(nb + 1, bs, HKV, D, dtype=dt, device=dev)
            q = torch.randn(n, H * D, dtype=dt, device=dev)
            qsl = torch.tensor([0, n], dtype=torch.int32, device=dev)
            sl = torch.tensor([n], dtype=torch.int32, device=dev)
            out = torch.empty_like(q)
            f = lambda: attention(q, kc, vc, qsl, sl, bt, H, HKV, D ** -0.5, max_query_len=n, max_seq_len=n, out=out)
            try:
                if cfg is None:
                    ms = bench(f)
                else:
                    with tuning.override({"attn_prefill": {"*": cfg}}):
                        ms = bench(f)
                row.append(f"{tflops(n, ms):6.1f}")
            except Exception as e:
                row.append(f"ERR {type(e).__name__}: {str(e)[:80]}")
        print(f"{name:28s} " + " | ".join(f"N={n}: {r}" for n, r in zip(NS, row)))

# ---------------------------------------------------------------- contiguous tutorial-style
@triton.jit
def _tile(acc, l_i, m_i, q, k, v, qk_scale, offs_m, start, MASK: tl.constexpr, BN: tl.constexpr):
    qk = tl.dot(q, k.T)
    if MASK:
        offs_n = start + tl.arange(0, BN)
        qk = qk * qk_scale + tl.where(offs_m[:, None] >= offs_n[None, :], 0, -1.0e6)
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        qk -= m_ij[:, None]
    else:
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        qk = qk * qk_scale - m_ij[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_ij)
    l_ij = tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    l_i = l_i * alpha + l_ij
    return acc, l_i, m_ij

@triton.jit
def fa_fwd(Q, K, V, O, N, qk_scale, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
           BM: tl.constexpr, BN: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // (H // HKV)
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BN)
    if TMA:
        qd = tl.make_tensor_descriptor(Q, shape=[N, H * D], strides=[H * D, 1], block_shape=[BM, D])
        kd = tl.make_tensor_descriptor(K, shape=[N, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
        vd = tl.make_tensor_descriptor(V, shape=[N, HKV * D], strides=[HKV * D, 1], block_shape=[BN, D])
        q = qd.load([m0, h * D])
    else:
        q = tl.load(Q + offs_m[:, None] * (H * D) + h * D + offs_d[None, :])
    m_i = tl.zeros([BM], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BM], dtype=tl.float32) + 1.0
    acc = tl.zeros([BM, D], dtype=tl.float32)
    for start in tl.range(0, m0, BN, warp_specialize=WS):
        start = tl.multiple_of(start, BN)
        if TMA:
            k = kd.load([start, kvh * D]); v = vd.load([start, kvh * D])
        else:
            rows = (start + offs_n)[:, None] * (HKV * D) + kvh * D + offs_d[None, :]
            k = tl.load(K + rows); v = tl.load(V + rows)
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, v, qk_scale, offs_m, start, False, BN)
    for start in tl.range(m0, m0 + BM, BN, warp_specialize=WS):
        start = tl.multiple_of(start, BN)
        if TMA:
            k = kd.load([start, kvh * D]); v = vd.load([start, kvh * D])
        else:
            rows = (start + offs_n)[:, None] * (HKV * D) + kvh * D + offs_d[None, :]
            k = tl.load(K + rows); v = tl.load(V + rows)
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k, v, qk_scale, offs_m, start, True, BN)
    acc = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * (H * D) + h * D + offs_d[None, :], acc.to(O.dtype.element_ty))

def run_contig():
    print("\n## contiguous tutorial-style causal FA (q-head per program, K/V [N, Hkv*D])")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    cfgs = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 4), (128, 128, 4, 2), (64, 64, 4, 3)]
    data = {}
    for n in NS:
        q = torch.randn(n, H * D, dtype=dt, device=dev)
        k = torch.randn(n, HKV * D, dtype=dt, device=dev)
        v = torch.randn(n, HKV * D, dtype=dt, device=dev)
        data[n] = (q, k, v, torch.empty_like(q))
    # correctness vs SDPA once (N=512)
    for tma in (False, True):
        for ws in (False, True):
            res = {}
            for (bm, bn, w, s) in cfgs:
                tag = f"BM{bm} BN{bn} w{w} s{s}"
                try:
                    info = ""
                    for n in NS:
                        q, k, v, o = data[n]
                        ck = fa_fwd[(n // bm, H)](q, k, v, o, n, D ** -0.5 * 1.4426950408889634, H=H, HKV=HKV, D=D,
                                                  BM=bm, BN=bn, TMA=tma, WS=ws, num_warps=w, num_stages=s)
                        if not info:
                            ttg = ck.asm.get("ttgir", "")
                            info = f"regs={ck.n_regs} spills={ck.n_spills} smem={ck.metadata.shared} ws_ir={'ttg.warp_specialize' in ttg} nw={ck.metadata.num_warps}"
                        if n == NS[0]:
                            qd = q.view(n, H, D).transpose(0, 1)[None]
                            kd = k.view(n, HKV, D).transpose(0, 1)[None].repeat_interleave(4, 1)
                            vd = v.view(n, HKV, D).transpose(0, 1)[None].repeat_interleave(4, 1)
                            ref = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)[0].transpose(0, 1).reshape(n, H * D)
                            err = (o.float() - ref.float()).abs().max().item()
                            info += f" err={err:.1e}"
                        ms = bench(lambda: fa_fwd[(n // bm, H)](q, k, v, o, n, D ** -0.5 * 1.4426950408889634, H=H, HKV=HKV, D=D,
                                                                BM=bm, BN=bn, TMA=tma, WS=ws, num_warps=w, num_stages=s))
                        res.setdefault(tag, []).append(tflops(n, ms))
                    print(f"TMA={int(tma)} WS={int(ws)} {tag:20s} " + " ".join(f"{x:6.1f}" for x in res[tag]) + "  " + info)
                except Exception as e:
                    print(f"TMA={int(tma)} WS={int(ws)} {tag:20s} ERR {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
            if res:
                best = [max(r[i] for r in res.values() if len(r) > i) for i in range(len(NS))]
                print(f"  best TMA={int(tma)} WS={int(ws)}: " + " ".join(f"N={n}:{b:6.1f}" for n, b in zip(NS, best)))

if __name__ == "__main__":
    which = sys.argv[1:] or ["sdpa", "forge", "contig"]
    for w in which:
        t = time.time()
        try:
            {"sdpa": run_sdpa, "forge": run_forge, "contig": run_contig}[w]()
        except Exception:
            traceback.print_exc()
        print(f"[{w} took {time.time() - t:.0f}s]", flush=True)
