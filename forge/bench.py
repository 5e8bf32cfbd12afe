"""`forge bench`: llama-bench-like prefill (pp) and decode (tg) throughput.

pp N: one prompt of N fresh random tokens, timed from submission to its first sampled token.
tg N: `batch` sequences (1-token prompts; D-token with -d) each generate N tokens; the decode
steps after every sequence's first token are timed, and the tokens they sample count (JSON
`tg_tokens_timed`: batch * N unless a long batch of prompts was still being prefilled while its
first sequences decoded). Each test runs once to warm up, then `repetitions` times; the
table shows mean ± std of tokens/s. Decode also reports the achieved weight bandwidth (weight
bytes read per step / step time) against the device's measured copy bandwidth.

`-d D` (llama-bench's depth) puts D tokens in the context first, as "pp N @ dD" / "tg N @ dD":
- pp: a D-token prompt runs untimed and its KV blocks stay in the prefix cache (on for this
  run); the timed prompt is those D tokens plus N fresh ones, so only the N (and the part of a
  cache block D leaves unfilled) are computed. The tokens served from the cache are checked
  and reported (JSON `pp_cached_tokens`).
- tg: each of the `batch` sequences starts from a D-token prompt (prefilled before the timed
  decode steps), so every timed step attends over D..D+N keys. The repetition's hiccups include
  that prefill.
A KV cache (`--kv-tokens`) or a model context too small for the test is an error before
anything runs, and a repetition that had requests preempted is one after.

Every timed repetition runs under a `HiccupRecorder` (forge/runtime/hiccups.py): GC passes, Triton
JIT compiles, new CUDA allocator segments in that repetition go to the JSON ("hiccups"), and a
line after the table names the repetitions that had a slow GC pass, a compile or a new segment.
After the warm-up the heap is frozen (`gc.collect(); gc.freeze()`) so that a generation-2 pass
does not walk the loaded model's objects inside a timed repetition; `--no-gc-freeze` skips that.
On a GPU, prefill steps replay CUDA graphs (runtime/graphs.py PrefillGraphs; the warm-up
captures the pp size's graph); `--no-prefill-graphs` runs them eagerly.
"""
from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forge.errors import ForgeError
from forge.runtime.hiccups import HiccupRecorder, describe, freeze_gc
from forge.sampling import SamplingParams


def _model_path(a) -> str:
    if a.synthetic:
        from forge.testing.synthetic import write_synthetic

        out = Path(tempfile.gettempdir()) / f"forge-synthetic-{a.synthetic}-{a.quant}.gguf"
        if not out.exists():
            write_synthetic(out, a.synthetic, a.quant, seed=0)
        return str(out)
    from forge.hub import DEFAULT_MODEL

    return a.model_path or DEFAULT_MODEL


def _run_requests(engine, prompts: list[list[int]], n: int) -> tuple[float, float, int]:
    """Returns (seconds to the first token of every request, seconds of the rest, tokens sampled
    in the rest): fewer than len(prompts) * (n - 1) when some requests were already decoding
    while the last prompts were still being prefilled."""
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    rids = [engine.add_request(p, params) for p in prompts]
    first_done = None
    pending = set(rids)
    started: set[str] = set()
    after = 0
    while pending:
        outs = engine.step()
        if first_done is not None:
            after += len(outs)  # one output per request sampled in the step
        for out in outs:
            started.add(out.request_id)
            if out.finished:
                pending.discard(out.request_id)
        if first_done is None and len(started) == len(rids):
            first_done = time.perf_counter()
    t1 = time.perf_counter()
    return first_done - t0, t1 - first_done, after


def copy_bandwidth(backend) -> float:
    """Measured device copy bandwidth in bytes/s (read + write)."""
    fn = getattr(backend, "copy_bandwidth", None)
    if fn is not None:
        return float(fn())
    a = np.ones(64 << 20, dtype=np.uint8)
    b = np.empty_like(a)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t)
    return 2 * a.nbytes / statistics.median(ts)


def run_bench(a) -> int:
    from forge.llm import LLM

    depth = int(getattr(a, "depth", 0) or 0)
    if a.n_prompt < 1 or a.n_gen < 2 or a.batch < 1 or a.repetitions < 1 or depth < 0:
        raise ForgeError("bench needs -p >= 1, -n >= 2, -b >= 1, -r >= 1 and -d >= 0")
    path = _model_path(a)
    longest = depth + max(a.n_prompt + 1, a.n_gen + 1)

    def check_context(limit: int) -> None:
        if longest > limit:
            raise ForgeError(f"bench: -d {depth} with -p {a.n_prompt} / -n {a.n_gen} needs "
                             f"{longest} tokens of context; the model has {limit}")

    if depth:  # before a KV cache of that size is allocated
        from forge import hub
        from forge.loader.config import ModelConfig
        from forge.loader.reader import GGUFFile

        check_context(ModelConfig.from_gguf(GGUFFile(hub.resolve(path))).context_length)
    extra = {"prefill_graphs": False} if getattr(a, "no_prefill_graphs", False) else {}
    # KV: the larger of the pp prompt (depth + n_prompt; the depth blocks it reuses from the
    # prefix cache are the same blocks) and the batch's tg sequences (depth + n_gen each), plus
    # the depth-0 sizing (those two again) as headroom
    need = max(depth + a.n_prompt + a.n_gen + 64, a.batch * (depth + a.n_gen + 32))
    head = max(a.n_prompt + a.n_gen + 64, a.batch * (a.n_gen + 32))
    bs_hint = 16  # the engine's default cache block; the timed pp step holds depth % bs extra
    llm = LLM(path, device=a.device, **extra,
              max_model_len=max(depth + a.n_prompt + 8, depth + a.n_gen + 8, 1024),
              max_num_batched_tokens=max(a.n_prompt + depth % bs_hint, 512),
              max_num_seqs=max(a.batch, 1), kv_cache_tokens=a.kv_tokens or need + head,
              enable_prefix_caching=depth > 0, run_ahead=not a.no_run_ahead, gc_freeze=False)
    eng = llm.engine
    bs = eng.block_size
    check_context(eng.max_model_len)  # the engine's cap: the model's context, -d 0 included
    blocks = lambda n: -(-n // bs)  # noqa: E731
    want = bs * max(blocks(depth + a.n_prompt + 1), a.batch * blocks(depth + a.n_gen + 1))
    if eng.pool.capacity_tokens < want:
        raise ForgeError(f"bench: the KV cache holds {eng.pool.capacity_tokens} tokens; -d {depth} "
                         f"-p {a.n_prompt} -n {a.n_gen} -b {a.batch} needs {want} "
                         "(raise --kv-tokens, or leave it out)")
    vocab = eng.cfg.vocab_size
    rng = np.random.default_rng(0)
    at = f" @ d{depth}" if depth else ""
    tg_len = max(depth, 1)  # tokens of each tg prompt

    def rand_prompt(n: int) -> list[int]:
        return rng.integers(vocab // 16, vocab - 1, size=n).tolist()

    def pp_context() -> list[int]:
        """The depth tokens of a pp test, run (untimed) so their blocks are in the cache."""
        ctx = rand_prompt(depth)
        if depth:
            _run_requests(eng, [ctx], 1)
        return ctx

    def run_pp(ctx: list[int]) -> tuple[float, int]:
        """Seconds to the first token of an n_prompt-token prompt after the context `ctx`, and
        the tokens the prefix cache served."""
        before = eng.scheduler.num_cached_tokens
        t_first, _, _ = _run_requests(eng, [ctx + rand_prompt(a.n_prompt)], 2)
        return t_first, eng.scheduler.num_cached_tokens - before

    def tg_prompts() -> list[list[int]]:
        return [rand_prompt(tg_len) for _ in range(a.batch)]

    # warm-up: both paths once, at the measured sizes (as llama-bench's warm-up run does)
    run_pp(pp_context())
    _run_requests(eng, tg_prompts(), 4)
    gc_freeze = not getattr(a, "no_gc_freeze", False)
    t = time.perf_counter()
    frozen = freeze_gc() if gc_freeze else 0  # after load + warm-up: see the module docstring
    freeze_ms = 1e3 * (time.perf_counter() - t) if gc_freeze else None

    pp, tg, pp_cached, tg_tokens = [], [], [], []
    hic: dict[str, list[dict]] = {"pp": [], "tg": []}
    dev = getattr(eng.backend, "device", None) if eng.backend.name != "cpu" else None
    preempted = eng.scheduler.num_preemptions
    for _ in range(a.repetitions):
        ctx = pp_context()
        with HiccupRecorder(dev) as rec:
            t_first, cached = run_pp(ctx)
        if cached < depth // bs * bs:  # every full block of the context should be reused
            raise ForgeError(f"bench -d {depth}: the prefix cache served {cached} of the "
                             f"{depth} context tokens, so the pp figure would include them "
                             "(raise --kv-tokens)")
        hic["pp"].append(rec.summary())
        pp.append((depth + a.n_prompt - cached) / t_first)
        pp_cached.append(cached)
        prompts = tg_prompts()
        with HiccupRecorder(dev) as rec:  # the prompts' prefill included (-d: not timed)
            _, t_rest, timed = _run_requests(eng, prompts, a.n_gen + 1)
        hic["tg"].append(rec.summary())
        tg.append(timed / t_rest)
        tg_tokens.append(timed)
    if eng.scheduler.num_preemptions != preempted:
        raise ForgeError(f"bench: {eng.scheduler.num_preemptions - preempted} requests were "
                         "preempted for KV cache space, so the figures are not one batch's "
                         "(raise --kv-tokens, or leave it out)")
    gc_tracked = len(gc.get_objects())  # what a generation-2 pass walks (frozen objects excluded)

    # Bytes of weights one decode step reads: every matrix once (the embedding table only as
    # the tied output head), in the form the backend holds them: GGUF blocks on the GPU,
    # dequantized float32 copies on the CPU.
    on_cpu = eng.backend.name == "cpu"
    weight_bytes = 0
    for name, t in eng.file.tensors.items():
        if name == "token_embd.weight" and not eng.cfg.tied_embeddings:
            continue
        n_elem = int(np.prod(t.shape))
        weight_bytes += 4 * n_elem if (on_cpu and len(t.shape) == 2) else t.n_bytes
    bw = copy_bandwidth(eng.backend)
    steps_per_s = statistics.mean(tg) / a.batch
    achieved = weight_bytes * steps_per_s

    def ms(xs):
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    rows = [(f"pp{a.n_prompt}{at}", *ms(pp)),
            (f"tg{a.n_gen}" + (f" b{a.batch}" if a.batch > 1 else "") + at, *ms(tg))]
    name = Path(path).name
    print("| model | backend | test | t/s |")
    print("| --- | --- | --- | ---: |")
    for test, mean, sd in rows:
        print(f"| {name} | {eng.backend.name} | {test} | {mean:,.2f} ± {sd:,.2f} |")
    notes = []
    for kind in ("pp", "tg"):
        for i, summary in enumerate(hic[kind]):
            what = describe(summary)
            if what:
                notes.append(f"{kind} rep {i + 1}: {'; '.join(what)}")
    if notes:
        print(f"hiccups{'' if gc_freeze else ' (no gc freeze)'}: " + " | ".join(notes))
    print(f"\ndecode weight traffic: {weight_bytes / 2**20:,.1f} MiB/step -> {achieved / 1e9:,.2f} GB/s "
          f"achieved vs {bw / 1e9:,.1f} GB/s measured copy bandwidth ({100 * achieved / bw:.0f}%)")
    print(f"memory: {eng.memory_report()}")
    ca = eng.compile_ahead
    load = f"load: {eng.load_seconds:.1f} s (" + ", ".join(
        f"{k} {v:.1f}" for k, v in eng.load_phases.items()) + ")"
    if ca and "kernels" in ca:
        load += f"; {ca['kernels']} kernel variants compiled ahead on {ca['threads']} threads"
        if ca["failed"]:
            load += f", {ca['failed']} failed"
    elif ca:
        load += "; compile ahead skipped (marked)"
    print(load)
    hits, misses = eng.num_ahead_hits, eng.num_ahead_misses
    if eng.graphs is not None:
        print(f"decode run-ahead: {'off' if not eng.run_ahead else f'{hits} steps launched ahead and used, {misses} discarded'}")
    pg = eng.prefill_graphs
    pgi = None
    if pg is not None:
        from forge.kernels import pdl

        pgi = {"graphs": sorted(pg.by_size), "replays": pg.num_replays, "eager": pg.num_eager,
               "pdl": pg.pdl and pdl.enabled()}
        print(f"prefill graphs: {len(pg.by_size)} captured (tokens, seqs): "
              f"{', '.join(f'{t}x{b}' for t, b in sorted(pg.by_size))}; {pg.num_replays} steps "
              f"replayed, {pg.num_eager} eager past the graph limit")
    peak = None
    if eng.backend.name == "gpu":
        import torch

        peak = torch.cuda.max_memory_allocated(eng.backend.device)
        print(f"peak GPU memory allocated: {peak / 2**30:.2f} GiB")
    if a.json:
        res = {"model": str(path), "backend": eng.backend.name, "n_prompt": a.n_prompt,
               "n_gen": a.n_gen, "batch": a.batch, "depth": depth, "repetitions": a.repetitions,
               "pp_tps": pp, "tg_tps": tg, "pp_cached_tokens": pp_cached,
               "tg_prompt_tokens": tg_len, "tg_tokens_timed": tg_tokens,
               "weight_bytes_per_step": weight_bytes,
               "decode_bytes_per_s": achieved, "copy_bytes_per_s": bw, "peak_gpu_bytes": peak,
               "memory": eng.memory_report(), "run_ahead": eng.run_ahead,
               "run_ahead_hits": hits, "run_ahead_misses": misses,
               "gc_freeze": gc_freeze, "gc_frozen_objects": frozen, "gc_freeze_ms": freeze_ms,
               "gc_tracked_objects": gc_tracked,
               "gc_threshold": list(gc.get_threshold()), "hiccups": hic,
               "prefill_graphs": pgi, "load_s": eng.load_seconds, "load_phases": eng.load_phases,
               "compile_ahead": ca}
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}", file=sys.stderr)
    return 0
