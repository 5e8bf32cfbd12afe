"""Run 24 call 7 (research, GPU): why pp512 @ d4096 on a Gemma 3 1B-shaped model varies by
rep (call 6: 64-90k tok/s within one process). The bench's pp loop (forge/bench.py's engine
settings), each timed request under torch.profiler: wall time to the first token, the GPU's
kernel time (sum) and span (first kernel start to last kernel end), so that host gaps and
GPU-side variation show apart; then the kernels whose time differs most between the fastest
and the slowest reps.

    python bench/results/run24/pp_profile.py [REPS]
"""
import collections
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType

sys.path.insert(0, os.getcwd())
from forge.bench import _run_requests  # noqa: E402
from forge.llm import LLM  # noqa: E402
from forge.testing.synthetic import write_synthetic  # noqa: E402

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
DEPTH, NP = 4096, 512
path = Path(tempfile.gettempdir()) / "forge-synthetic-gemma3-1b-Q4_K_M.gguf"
if not path.exists():
    write_synthetic(path, "gemma3-1b", "Q4_K_M", seed=0)
need = DEPTH + NP + 4 + 64
llm = LLM(str(path), device="gpu", max_model_len=DEPTH + NP + 8,
          max_num_batched_tokens=NP, max_num_seqs=1, kv_cache_tokens=need + NP + 68,
          enable_prefix_caching=True, run_ahead=True, gc_freeze=False)
eng = llm.engine
rng = np.random.default_rng(0)
vocab = eng.cfg.vocab_size


def rand(n):
    return rng.integers(vocab // 16, vocab - 1, size=n).tolist()


def one(profile: bool):
    ctx = rand(DEPTH)
    _run_requests(eng, [ctx], 1)
    prompt = ctx + rand(NP)
    if not profile:
        return _run_requests(eng, [prompt], 2)[0], None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        first, _, _ = _run_requests(eng, [prompt], 2)
    return first, prof


one(False)
one(False)
rows = []
for r in range(REPS):
    first, prof = one(True)
    ks = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in ks)
    span = (max(e.time_range.end for e in ks) - min(e.time_range.start for e in ks)) if ks else 0
    per = collections.Counter()
    for e in ks:
        per[e.name[:60]] += e.time_range.elapsed_us()
    rows.append((first, busy, span, len(ks), per))
    print(f"rep {r}: first token {first * 1e3:7.2f} ms ({NP / first:8.0f} tok/s), kernels {len(ks)}, busy {busy / 1e3:7.2f} ms, span "
          f"{span / 1e3:7.2f} ms", flush=True)
for r in range(REPS):
    print(f"unprofiled rep {r}: {NP / one(False)[0]:8.0f} tok/s")
fast = min(rows, key=lambda x: x[0])
slow = max(rows, key=lambda x: x[0])
print(f"\nfastest rep {fast[0] * 1e3:.2f} ms vs slowest {slow[0] * 1e3:.2f} ms; busy "
      f"{fast[1] / 1e3:.2f} vs {slow[1] / 1e3:.2f} ms, span {fast[2] / 1e3:.2f} vs "
      f"{slow[2] / 1e3:.2f}")
names = set(fast[4]) | set(slow[4])
diff = sorted(names, key=lambda n: -abs(slow[4][n] - fast[4][n]))
print("kernels by |slow - fast| (us): name, fast, slow")
for n in diff[:15]:
    print(f"  {n:60s} {fast[4][n]:9.1f} {slow[4][n]:9.1f}")
print("\ntop kernels of the slowest rep (us):")
for n, v in slow[4].most_common(12):
    print(f"  {n:60s} {v:9.1f}")
