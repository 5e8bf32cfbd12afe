"""Registers, spills and shared memory of every prefill-attention variant compiled here, after
whole prompts with and without `fresh=` at the given heads (H100 ISA check of the TMA path)."""
import sys
import torch
sys.path.insert(0, ".")
from forge.kernels import attention as A  # noqa: E402

dev = "cuda"
for h, hkv, d, window in ((32, 8, 128, None), (32, 8, 64, None), (4, 1, 256, None), (4, 1, 256, 512)):
    n, bs = 1000, 16
    nb = n // bs + 2
    kc = torch.randn(nb, bs, hkv, d, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    bt = torch.randperm(nb, device=dev)[None, :].to(torch.int32)
    kv = kc[bt[0].long()].reshape(-1, hkv * d)[:n]
    vv = vc[bt[0].long()].reshape(-1, hkv * d)[:n]
    q = torch.randn(n, h * d, device=dev, dtype=torch.bfloat16)
    qsl = torch.tensor([0, n], dtype=torch.int32, device=dev)
    sl = torch.tensor([n], dtype=torch.int32, device=dev)
    a = A.attention(q, kc, vc, qsl, sl, bt, h, hkv, d ** -0.5, sliding_window=window,
                    max_query_len=n, max_seq_len=n)
    b = A.attention(q, kc, vc, qsl, sl, bt, h, hkv, d ** -0.5, sliding_window=window,
                    max_query_len=n, max_seq_len=n, fresh=(kv, vv))
    print(f"H{h}:{hkv} d{d} window {window}: max|paged - fresh| = "
          f"{(a.float() - b.float()).abs().max().item():.3e}")
torch.cuda.synchronize()
for dv, caches in A._attn_prefill_kernel.device_caches.items():
    for key, k in caches[0].items():
        fresh = "tensordesc" in str(key)
        print(f"fresh={fresh!s:5} regs {k.n_regs:3d} spills {k.n_spills:4d} "
              f"shared {k.metadata.shared // 1024:3d} KiB warps {k.metadata.num_warps} "
              f"stages {k.metadata.num_stages}")
