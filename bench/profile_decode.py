"""Where a decode step's time goes on the GPU: host-side step time vs the graph's GPU time, and
the GPU time per kernel (torch profiler), for a synthetic model.

    python bench/profile_decode.py --shape llama3-8b --quant Q4_K_M [--batch 1] [--ctx 512]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from forge import LLM, SamplingParams
from forge.testing.synthetic import write_synthetic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prefill", action="store_true",
                    help="also profile one --ctx-token prefill step: GPU time per kernel")
    ap.add_argument("--cprofile", action="store_true",
                    help="also show where the host's time goes in decode steps (cProfile)")
    a = ap.parse_args()
    path = Path(tempfile.gettempdir()) / f"forge-synthetic-{a.shape}-{a.quant}.gguf"
    if not path.exists():
        write_synthetic(path, a.shape, a.quant, seed=0)
    llm = LLM(path, device="gpu", max_model_len=max(1024, a.ctx + 3 * a.steps + 16),
              max_num_seqs=a.batch, kv_cache_tokens=a.batch * (a.ctx + 3 * a.steps + 64))
    eng = llm.engine
    rng = np.random.default_rng(0)
    vocab = eng.cfg.vocab_size
    params = SamplingParams(max_tokens=a.steps * 3, temperature=0, ignore_eos=True)
    if a.prefill:
        from torch.profiler import ProfilerActivity, profile

        rid = eng.add_request(rng.integers(100, vocab - 1, a.ctx).tolist(), params)
        eng.step()  # warm (first prefill at this length)
        eng.abort(rid)
        pw = []
        for i in range(4):
            rid = eng.add_request(rng.integers(100, vocab - 1, a.ctx).tolist(), params)
            torch.cuda.synchronize()
            t = time.perf_counter()
            if i == 3 and a.cprofile:
                import cProfile
                import pstats

                pr = cProfile.Profile()
                pr.enable()
                eng.step()
                torch.cuda.synchronize()
                pr.disable()
                pstats.Stats(pr).sort_stats("tottime").print_stats(30)
                pstats.Stats(pr).sort_stats("cumtime").print_stats(30)
            else:
                eng.step()
                torch.cuda.synchronize()
            pw.append(time.perf_counter() - t)
            eng.abort(rid)
        print("prefill step walls (ms):", [round(w * 1e3, 1) for w in pw])
        rid = eng.add_request(rng.integers(100, vocab - 1, a.ctx).tolist(), params)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            eng.step()
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        print(f"prefill step ({a.ctx} tokens, profiled): {wall * 1e3:.1f} ms wall")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15,
                                        max_name_column_width=60))
        eng.abort(rid)
    for _ in range(a.batch):
        eng.add_request(rng.integers(100, vocab - 1, a.ctx).tolist(), params)
    while not all(len(r.output_token_ids) for r in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()
    for _ in range(8):
        eng.step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(a.steps):
        t = time.perf_counter()
        eng.step()
        walls.append(time.perf_counter() - t)
    host = statistics.median(walls)
    if a.cprofile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        for _ in range(a.steps):
            eng.step()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(22)

    g = eng.graphs
    bs = next(r for r in g.rungs if r >= a.batch)
    rung = g.by_size[bs]
    graph = rung.graph
    times = []
    for _ in range(10):
        # 10 replays back to back (the host launches run ahead of the GPU, as in serving), each
        # after a flag reset (one tiny kernel): flag 0 makes a replay recompute the current step
        # (same inputs, same K/V written) instead of moving on (runtime/graphs.py), so the
        # engine's state is left as it was
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            rung.views["meta"][1:].zero_()
            graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e4)
    gpu = statistics.median(times)
    print(f"{a.shape} {a.quant} batch {a.batch} ctx {a.ctx}: step {host * 1e3:.3f} ms host wall "
          f"({a.batch / host:.1f} tok/s); graph replay {gpu * 1e3:.3f} ms GPU; "
          f"host overhead {max(host - gpu, 0) * 1e3:.3f} ms")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            eng.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    # one step's kernels in launch order (the last profiled step): the per-layer pattern shows
    # which GEMV (qkv, o, gate_up, down; types differ per layer in K-quant mixes) costs what
    kern = sorted((e for e in prof.events() if e.device_type.name == "CUDA"
                   and e.time_range.elapsed_us() > 0), key=lambda e: e.time_range.start)
    if not kern:
        print("(the profiler returned no kernel events for the decode steps)")
        return
    counts: dict[str, int] = {}
    for e in kern:
        counts[e.name] = counts.get(e.name, 0) + 1
    marker = next((e.name for e in kern if counts[e.name] == 5), kern[0].name)  # once per step
    steps, cur = [], []
    for e in kern:
        if e.name == marker and cur:
            steps.append(cur)
            cur = []
        cur.append(e)
    steps.append(cur)
    last = max(steps, key=len)
    span = last[-1].time_range.end - last[0].time_range.start
    print(f"one step: {len(last)} kernels, {sum(e.time_range.elapsed_us() for e in last):.1f} us "
          f"of kernel time, {span:.1f} us from the first start to the last end")
    # gap: from the previous kernel's end to this one's start (negative: they overlapped, as
    # kernels launched with PDL do while the one before finishes)
    prev_end = {id(e): p.time_range.end for p, e in zip(last, last[1:])}
    for e in last[:24] + [None] + last[-8:]:
        if e is None:
            print("   ...")
            continue
        gap = e.time_range.start - prev_end[id(e)] if id(e) in prev_end else 0.0
        print(f"   {e.name[:40]:40s} {e.time_range.elapsed_us():8.1f} us  gap {gap:6.1f} us")


if __name__ == "__main__":
    main()
