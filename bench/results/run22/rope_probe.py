"""Run 22 call 9: the rope + KV-write kernel at a 512-token prefill (8B shapes, norm style with
rope_freqs, as bench_small_ops), for ncu: 26 us per layer in an 8B pp512 step profile, ~12.6 MB
moved. Also prints its CUDA-graph time and that of a plain copy of the same bytes."""
import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from autotune.timing import graph_ms  # noqa: E402
from forge.kernels.rope import rope  # noqa: E402
from forge.runtime.backend import RopeSpec  # noqa: E402

H, HKV, DH, BS, T = 32, 8, 128, 16, 512
dt, dev = torch.bfloat16, "cuda"
torch.manual_seed(0)
nb = 4 * T // BS + 8
kc = torch.zeros(nb, BS, HKV, DH, dtype=dt, device=dev)
vc = torch.zeros_like(kc)
slots = torch.randperm(nb * BS, device=dev)[:T]
pos = torch.randint(0, 8192, (T,), device=dev, dtype=torch.int32)
qkv = torch.randn(T, (H + 2 * HKV) * DH, dtype=dt, device=dev)
q, k, v = qkv.split([H * DH, HKV * DH, HKV * DH], dim=1)
ff = torch.rand(DH // 2, device=dev) * 7 + 1
spec = RopeSpec(DH, 500000.0, "norm", 1.0, ff)
f = lambda: rope(q, k, v, pos, kc, vc, slots, spec, H, HKV, DH)  # noqa: E731
for _ in range(3):
    f()
torch.cuda.synchronize()
if not os.environ.get("NCU"):
    src = torch.randn(T * (H + 2 * HKV) * DH, dtype=dt, device=dev)
    dst = torch.empty_like(src)
    ms = graph_ms([f], repeat=20)
    mc = graph_ms([lambda: dst.copy_(src)], repeat=20)
    nbytes = 2 * T * (H + 2 * HKV) * DH * 2
    print(f"rope T={T}: {ms * 1e3:.1f} us ({nbytes / ms / 1e6:.0f} GB/s); copy of the same bytes "
          f"{mc * 1e3:.1f} us")
