"""Run 22: where pp512 @ d8192 (8B Q4_K_M, 16.5k tok/s against 25k at depth 0) spends its time:
the host's add_request (prefix-cache lookup over the prompt), the step's wall, and the GPU
time per kernel of one such step (torch profiler, prefill graphs off so kernels are listed)."""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from forge import LLM, SamplingParams
from forge.testing.synthetic import write_synthetic

depth = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
n = 512
path = Path(tempfile.gettempdir()) / "forge-synthetic-llama3-8b-Q4_K_M.gguf"
if not path.exists():
    write_synthetic(path, "llama3-8b", "Q4_K_M", seed=0)
for graphs in (True, False):
    llm = LLM(path, device="gpu", max_model_len=depth + n + 64, max_num_batched_tokens=n,
              max_num_seqs=1, kv_cache_tokens=2 * (depth + n) + 1024,
              enable_prefix_caching=True, prefill_graphs=graphs)
    eng = llm.engine
    vocab = eng.cfg.vocab_size
    rng = np.random.default_rng(0)
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)

    def finish(rid, eng=eng):
        while eng.has_unfinished():
            eng.step()

    def one(profile=False, eng=eng):
        ctx = rng.integers(vocab // 16, vocab - 1, size=depth).tolist()
        r0 = eng.add_request(ctx, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
        finish(r0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        rid = eng.add_request(ctx + rng.integers(vocab // 16, vocab - 1, size=n).tolist(), params)
        t_add = time.perf_counter() - t
        steps = []
        prof = None
        while True:
            t = time.perf_counter()
            if profile:
                from torch.profiler import ProfilerActivity, profile as prof_ctx
                with prof_ctx(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    outs = eng.step()
                    torch.cuda.synchronize()
                profile = False
            else:
                outs = eng.step()
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - t)
            if any(o.request_id == rid for o in outs):
                break
        finish(rid)
        return t_add, steps, prof

    for _ in range(2):
        one()
    res = [one() for _ in range(5)]
    print(f"\n## prefill_graphs={graphs}: pp{n} @ d{depth}")
    print("add_request ms:", [round(r[0] * 1e3, 2) for r in res])
    print("step walls ms (until the first token):", [[round(s * 1e3, 2) for s in r[1]] for r in res])
    tot = [r[0] + sum(r[1]) for r in res]
    print(f"median total {statistics.median(tot) * 1e3:.2f} ms -> {n / statistics.median(tot):,.0f} tok/s")
    if not graphs:
        _, _, prof = one(profile=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20,
                                        max_name_column_width=70))
    llm = eng = None
    torch.cuda.empty_cache()
