"""Microbenchmark: forge paged attention vs torch scaled_dot_product_attention (GPU only).

    python bench/bench_attention.py [--dtype bf16|fp16] [--only decode|prefill]
    python bench/bench_attention.py --sweep decode|prefill     # try launch configs, print best
    python bench/bench_attention.py --sweep decode --grid "SPLITS_PER_CU=1,2 num_stages=3,4" \
        --cases 1x4096x8192,32x512x8192 [--heads 32:8:64]

Llama-3-8B heads by default (--heads H:HKV:D): 32 query heads, 8 KV heads, head dim 128, cache
block size 16 with shuffled block ids.

decode (one query per sequence), batch 1 and 32 at contexts 512, 4096, 32768, plus the engine's
CUDA-graph situation: max_seq_len = 32768 (the graph's capacity, block tables 2048 wide) while
the real contexts are 512. Metric: KV bytes read / time (GB/s).
  graph us  the time per call inside a CUDA graph that runs L layers back to back, each with its
            own cache (L chosen so that the caches exceed L2 several times): what a decode step
            in the engine sees per layer, launch gaps included, no host overhead.
  eager us  triton.testing.do_bench (L2 flushed between calls): includes the Python launch cost
            whenever the GPU work is shorter than it.
  host us   CPU time of one eager call (Python launcher + Triton launch), measured without sync.
  torch reference: SDPA of one query over a contiguous [B, Hkv, ctx, D] copy of the same K/V
  (enable_gqa), timed the same two ways. Outputs are compared (max |diff|).
prefill (one sequence: n causal queries after ctx cached tokens; 512, 2048 and 8192 tokens from
  the start, 512 after 4096 and 8192): TFLOP/s with FLOPs = 4 * H * D * n * (ctx + (n+1)/2),
  the same count for both; SDPA over contiguous [1, H, ctx+n, D] K/V (expanded to H heads so the
  flash backend applies), is_causal, or the lower-right causal bias after a context; medians of
  CUDA-graph replays (do_bench where a call cannot be captured).
"fresh" times whole prompts (ctx 0) with their keys from this step's K/V rows, as the engine
runs them on Hopper (`attention(..., fresh=)`); "forge" reads them from the paged cache.
"vs sdpa" = SDPA time / the faster forge time (above 1: forge is faster).

--sweep times candidate launch configs through the real launcher (tuning.override) on the
decode (graph mode) or prefill shapes above and prints them ranked by the geometric mean of
their speedup over the launcher's default, with the JSON entry to put into a tuning table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autotune.spaces import _grid  # noqa: E402
from autotune.timing import graph_ms  # noqa: E402

H, HKV, D, BS = 32, 8, 128, 16
WINDOW = 0  # --window: prefill with a sliding window of this many keys (0: off)
CAPACITY = 0  # --capacity: prefill's max_seq_len at least this (a prefill graph's capacity)
FRESH = False  # --fresh: the prefill sweep times whole prompts with their keys from fresh rows
DEV = "cuda"
L2_TARGET = 256 << 20   # bytes of KV the graph rotates through (H100 L2: 50 MiB)


def paged_cache(total_tokens_per_seq: list[int], dtype, device, gen, width: int | None = None):
    """Random K/V in a paged cache with shuffled block ids; returns (k, v, block_tables).
    `width`: block-table columns (zero-padded, as the engine's graphs have)."""
    nblk = [-(-n // BS) for n in total_tokens_per_seq]
    nb = 1 + sum(nblk)
    ids = torch.randperm(nb - 1, generator=gen, device="cpu")[: sum(nblk)] + 1
    W = max(max(nblk), width or 0)
    bt = torch.zeros((len(nblk), W), dtype=torch.int32)
    used = 0
    for b, n in enumerate(nblk):
        bt[b, :n] = ids[used:used + n].to(torch.int32)
        used += n
    k = torch.randn((nb, BS, HKV, D), dtype=dtype, device=device)
    v = torch.randn((nb, BS, HKV, D), dtype=dtype, device=device)
    return k, v, bt.to(device)


def dense_from_paged(k, v, bt, ctx: int):
    """[B, Hkv, ctx, D] contiguous copies of the first ctx keys/values of each sequence."""
    B = bt.shape[0]
    cols = bt[:, : -(-ctx // BS)].long()
    kk = k[cols].reshape(B, -1, HKV, D)[:, :ctx].transpose(1, 2).contiguous()
    vv = v[cols].reshape(B, -1, HKV, D)[:, :ctx].transpose(1, 2).contiguous()
    return kk, vv


def do_bench_ms(fn) -> float:
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")


def host_us(fn, n: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


# ----------------------------------------------------------------------------------------------
# decode


class DecodeCase:
    """L layers of paged caches for `batch` sequences of `ctx` tokens; max_seq_len as given."""

    def __init__(self, batch, ctx, max_seq_len, dtype, gen, layers=None, with_dense=True):
        dev = DEV
        esz = torch.finfo(dtype).bits // 8
        self.batch, self.ctx, self.max_seq_len = batch, ctx, max_seq_len
        self.nbytes = 2 * batch * ctx * HKV * D * esz
        self.layers = layers or max(1, min(64, math.ceil(L2_TARGET / self.nbytes)))
        width = -(-max_seq_len // BS)
        self.caches = [paged_cache([ctx] * batch, dtype, dev, gen, width)
                       for _ in range(self.layers)]
        self.q = torch.randn((batch, H * D), dtype=dtype, device=dev)
        self.qsl = torch.arange(batch + 1, dtype=torch.int32, device=dev)
        self.sl = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
        self.outs = [torch.empty_like(self.q) for _ in range(self.layers)]
        self.dense = [dense_from_paged(k, v, bt, ctx) for k, v, bt in self.caches] \
            if with_dense else None
        self.scale = D ** -0.5

    def forge_fns(self):
        from forge.kernels.attention import attention

        def make(i):
            k, v, bt = self.caches[i]
            return lambda: attention(self.q, k, v, self.qsl, self.sl, bt, H, HKV, self.scale,
                                     max_query_len=1, max_seq_len=self.max_seq_len,
                                     out=self.outs[i])
        return [make(i) for i in range(self.layers)]

    def sdpa_fns(self):
        import torch.nn.functional as F

        qd = self.q.view(self.batch, H, 1, D)

        def make(i):
            kd, vd = self.dense[i]
            return lambda: F.scaled_dot_product_attention(qd, kd, vd, scale=self.scale,
                                                          enable_gqa=True)
        return [make(i) for i in range(self.layers)]

    def max_diff(self) -> float:
        fns, ref = self.forge_fns(), self.sdpa_fns()
        fns[0]()
        want = ref[0]().reshape(self.batch, H * D)
        return (self.outs[0].float() - want.float()).abs().max().item()


def run_decode(dtype, gen) -> None:
    print("\n## decode (one query per sequence); graph = per layer inside a CUDA graph of L layers")
    print(f"{'batch':>5} {'ctx':>6} {'max_seq':>7} {'L':>3} | {'graph us':>9} {'GB/s':>6} "
          f"{'eager us':>9} {'host us':>8} | {'sdpa gr us':>10} {'GB/s':>6} {'eager us':>9} | "
          f"{'vs sdpa':>7} {'max|diff|':>9}")
    cases = [(b, c, c) for b in (1, 32) for c in (512, 4096, 32768)]
    cases += [(1, 512, 32768), (32, 512, 32768)]  # the engine's graphs: capacity >> context
    for batch, ctx, msl in cases:
        case = DecodeCase(batch, ctx, msl, dtype, gen)
        ours = case.forge_fns()
        t_g = graph_ms(ours)
        t_e = do_bench_ms(ours[0])
        t_h = host_us(ours[0])
        try:
            ref = case.sdpa_fns()
            r_g = graph_ms(ref)
            r_e = do_bench_ms(ref[0])
            err = case.max_diff()
        except Exception as e:  # noqa: BLE001 - an SDPA build without enable_gqa
            print(f"  (sdpa failed: {type(e).__name__}: {str(e)[:100]})")
            r_g = r_e = err = float("nan")
        nbytes, layers = case.nbytes, case.layers
        gbs = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
        tag = "  <- graph capacity" if msl != ctx else ""
        print(f"{batch:>5} {ctx:>6} {msl:>7} {layers:>3} | {t_g * 1e3:>9.1f} "
              f"{gbs(t_g):>6.0f} {t_e * 1e3:>9.1f} {t_h:>8.1f} | {r_g * 1e3:>10.1f} "
              f"{gbs(r_g):>6.0f} {r_e * 1e3:>9.1f} | {r_g / t_g:>7.2f} {err:>9.1e}{tag}")
        del case
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# prefill


def prefill_fns(n, dtype, gen, ctx: int = 0):
    """n causal queries after ctx tokens already in the cache (ctx 0: a whole prompt)."""
    from forge.kernels.attention import attention
    import torch.nn.functional as F

    dev = DEV
    total = ctx + n
    k, v, bt = paged_cache([total], dtype, dev, gen)
    q = torch.randn((n, H * D), dtype=dtype, device=dev)
    qsl = torch.tensor([0, n], dtype=torch.int32, device=dev)
    sl = torch.tensor([total], dtype=torch.int32, device=dev)
    out = torch.empty_like(q)
    scale = D ** -0.5

    def call(fresh=None):
        attention(q, k, v, qsl, sl, bt, H, HKV, scale, sliding_window=WINDOW or None,
                  max_query_len=n, max_seq_len=max(total, CAPACITY), out=out, fresh=fresh)

    def ours():
        call()

    kk = k[bt[0].long()].reshape(-1, HKV, D)[:total]
    vv = v[bt[0].long()].reshape(-1, HKV, D)[:total]
    fk, fv = kk.reshape(total, HKV * D).contiguous(), vv.reshape(total, HKV * D).contiguous()

    def fresh():  # a whole prompt's keys from this step's rows (`attention(..., fresh=)`)
        call((fk, fv))
    qd = q.view(n, H, D).transpose(0, 1).unsqueeze(0).contiguous()
    kd = kk.repeat_interleave(H // HKV, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
    vd = vv.repeat_interleave(H // HKV, dim=1).transpose(0, 1).unsqueeze(0).contiguous()
    if WINDOW:  # a dense boolean mask (SDPA has no sliding-window argument)
        pos = ctx + torch.arange(n, device=dev)[:, None]
        j = torch.arange(total, device=dev)[None, :]
        masking = {"attn_mask": (j <= pos) & (pos - j < WINDOW)}
    elif ctx:  # queries at the end of the keys: the causal mask aligned to the lower right
        from torch.nn.attention.bias import causal_lower_right
        masking = {"attn_mask": causal_lower_right(n, total)}
    else:
        masking = {"is_causal": True}

    def ref():
        return F.scaled_dot_product_attention(qd, kd, vd, scale=scale, **masking)

    def err(fn=ours):
        fn()
        want = ref()[0].transpose(0, 1).reshape(n, H * D)
        return (out.float() - want.float()).abs().max().item()
    return ours, ref, err, (fresh if ctx == 0 else None)


def prefill_ms(fn) -> float:
    """Median ms per call inside a CUDA graph of enough back-to-back calls to run ~2 ms (a
    512-token prefill is shorter than its Python launch, which do_bench would time; a short
    graph of one call sizes it); do_bench where the call cannot be captured."""
    try:
        hint = graph_ms([fn], reps=3)
        return graph_ms([fn], reps=20, repeat=max(1, min(50, int(2.0 / max(hint, 1e-3)))))
    except Exception:  # noqa: BLE001 - a backend that cannot be captured
        torch.cuda.synchronize()
        return do_bench_ms(fn)


def attended_keys(n: int, ctx: int) -> float:
    """Query-key pairs of n causal queries after ctx cached tokens (within WINDOW if set)."""
    if not WINDOW:
        return n * (ctx + (n + 1) / 2)
    return float(sum(min(WINDOW, ctx + i + 1) for i in range(n)))


PREFILL_CASES = ((512, 0), (2048, 0), (8192, 0), (32768, 0), (512, 4096), (512, 8192))


def run_prefill(dtype, gen, cases=PREFILL_CASES) -> None:
    print("\n## prefill (one sequence: n causal queries after ctx cached tokens; "
          "CUDA-graph medians" + (f"; sliding window {WINDOW}, SDPA with a dense mask"
                                  if WINDOW else "")
          + (f"; max_seq_len {CAPACITY} as in a prefill graph" if CAPACITY else "") + ")")
    print(f"{'n@ctx':>10} | {'forge us':>9} {'TFLOP/s':>8} | {'fresh us':>9} {'TFLOP/s':>8} | "
          f"{'sdpa us':>9} {'TFLOP/s':>8} | {'vs sdpa':>7} {'max|diff|':>9}")
    for n, ctx in cases:
        ours, ref, err, fresh = prefill_fns(n, dtype, gen, ctx)
        t_ours = prefill_ms(ours)
        t_fresh = prefill_ms(fresh) if fresh else None
        t_ref = prefill_ms(ref)
        flops = 4.0 * H * D * attended_keys(n, ctx)
        tf = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
        best = min(t_ours, t_fresh or t_ours)
        diff = max(err(), err(fresh) if fresh else 0.0)
        fr = f"{t_fresh * 1e3:>9.1f} {tf(t_fresh):>8.1f}" if fresh else f"{'-':>9} {'-':>8}"
        print(f"{f'{n}@{ctx}':>10} | {t_ours * 1e3:>9.1f} {tf(t_ours):>8.1f} | {fr} | "
              f"{t_ref * 1e3:>9.1f} {tf(t_ref):>8.1f} | {t_ref / best:>7.2f} {diff:>9.1e}")
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# sweep


def parse_grid(text: str, known: set[str]) -> list[dict]:
    """'KEY=a,b KEY2=c' -> the candidates of that grid (ints). `known`: the keys the launcher
    reads (tuning drops any other key, so a typo would time the default under its name)."""
    axes = {}
    for item in text.split():
        key, _, vals = item.partition("=")
        if not key or not vals:
            raise SystemExit(f"--grid: expected KEY=v1,v2,... got {item!r}")
        if key not in known:
            raise SystemExit(f"--grid: {key!r} is not a key of this kernel "
                             f"(have {', '.join(sorted(known))})")
        try:
            axes[key] = tuple(int(v) for v in vals.split(","))
        except ValueError:
            raise SystemExit(f"--grid: {key} takes integers, got {vals!r}") from None
    return _grid(**axes)


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """'BxCTXxMAXSEQ,...' -> decode cases."""
    out = []
    for item in text.split(","):
        parts = item.lower().split("x")
        try:
            b, ctx, cap = (int(p) for p in parts)
        except ValueError:
            raise SystemExit(f"--cases: expected BATCHxCTXxMAX_SEQ, got {item!r}") from None
        if b < 1 or ctx < 1 or cap < ctx:
            raise SystemExit(f"--cases: {item!r}: need BATCH >= 1, CTX >= 1, MAX_SEQ >= CTX")
        out.append((b, ctx, cap))
    return out


def parse_prefill_cases(text: str) -> list[tuple[int, int]]:
    """'2048@0,512@8192' -> [(2048, 0), (512, 8192)], checked (N queries after CTX cached
    tokens)."""
    out = []
    for item in text.split(","):
        try:
            n, ctx = (int(x) for x in item.strip().split("@"))
        except ValueError:
            raise SystemExit(f"--cases: expected N@CTX items (prefill), got {item!r}") from None
        if n < 1 or ctx < 0:
            raise SystemExit(f"--cases: need N >= 1 and CTX >= 0, got {item!r}")
        out.append((n, ctx))
    return out


def sweep(kind: str, dtype, gen, grid: str | None = None, cases_text: str | None = None,
          top: int = 8) -> None:
    from forge.kernels import tuning

    kernel = "attn_decode" if kind == "decode" else "attn_prefill"
    if kind == "decode":
        shapes = [(1, 512, 32768), (1, 4096, 4096), (1, 32768, 32768), (32, 512, 32768),
                  (32, 4096, 4096), (32, 32768, 32768)]
        if cases_text:
            shapes = parse_cases(cases_text)
        cases = {s: DecodeCase(*s, dtype, gen, with_dense=False) for s in shapes}
        # tiles first (split scheme at its default), then the split scheme with the best tile
        stage1 = [c for c in _grid(BLOCK_N=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3))
                  if not (c["BLOCK_N"] == 32 and c["num_warps"] == 8)]
        stage2 = _grid(MIN_PARTITION=(64, 128, 256), SPLITS_PER_CU=(2, 4, 8),
                       MAX_SPLITS=(32, 64, 128))

        def measure(s):
            return graph_ms(cases[s].forge_fns(), reps=10)
    else:
        # a whole 2048- and 8192-token prompt, and a 512-token chunk after 8192 cached tokens
        pairs = [(2048, 0), (8192, 0), (512, 8192)]
        if cases_text:
            pairs = parse_prefill_cases(cases_text)
        shapes = [f"{n}@{ctx}" for n, ctx in pairs]
        fns = {}
        for n, ctx in pairs:  # --fresh: whole prompts through `attention(..., fresh=)`
            f = prefill_fns(n, dtype, gen, ctx)
            fns[f"{n}@{ctx}"] = f[3] if FRESH and f[3] else f[0]
        stage1 = [c for c in _grid(BLOCK_M=(64, 128), BLOCK_N=(32, 64, 128), num_warps=(4, 8),
                                   num_stages=(2, 3, 4))
                  if (c["BLOCK_M"] == 128) == (c["num_warps"] == 8)
                  and 2 * (c["BLOCK_M"] * D + c["num_stages"] * c["BLOCK_N"] * 2 * D) <= 227 << 10]
        stage2 = []

        def measure(s):
            return prefill_ms(fns[s])

    def run(label, cands, base):
        base_t = None
        rows = []
        for c in [{}] + cands:
            entry = dict(base, **c)
            try:
                with tuning.override({kernel: {"*": entry}}):
                    ts = {s: measure(s) for s in shapes}
            except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                print(f"  {json.dumps(entry)}: failed ({type(e).__name__}: {str(e)[:80]})")
                continue
            if base_t is None:
                base_t = ts
            gm = math.exp(sum(math.log(base_t[s] / ts[s]) for s in shapes) / len(shapes))
            rows.append((gm, entry, ts))
        rows.sort(key=lambda r: -r[0])
        print(f"\n### {kind} sweep, {label}: speedup over the default (geometric mean), "
              "us per shape")
        print("  shapes: " + ", ".join(map(str, shapes)))
        shown = rows[:top] + [r for r in rows[top:] if r[1] == base]  # the default, always
        for gm, entry, ts in shown:
            print(f"  {gm:5.2f}x  " + " ".join(f"{ts[s] * 1e3:8.1f}" for s in shapes)
                  + f"   {json.dumps(entry)}")
        if rows and len(shapes) > 1:
            print("  best per shape (us, vs the default):")
            for s in shapes:
                r = min(rows, key=lambda r: r[2][s])
                t, entry = r[2][s], r[1]
                print(f"    {str(s):>20}  {t * 1e3:8.1f}  {base_t[s] / t:5.2f}x  {json.dumps(entry)}")
        return rows[0][1] if rows else base

    if grid:  # one stage over the given grid, laid over the launcher's default
        from forge.kernels import attention as attn

        default = (attn._decode_default if kind == "decode" else attn._prefill_default)(
            "nvidia", D, 2)
        stage1, stage2 = parse_grid(grid, set(default)), []
    best = run("tiles" if not grid else "grid", stage1, {})
    if stage2:
        best = run("splits", stage2, best)
    where = f"d{D}_g{H // HKV}" if kind == "decode" else \
        f"d{D}_g{H // HKV}_kv<KV>_t<T>, T the query tokens, KV the keys a query may attend " \
        "(max_seq_len, capped by the window); the shapes' best are listed above"
    print(f"\nbest {kernel} entry for configs/sm90.json (bucket {where}): {json.dumps(best)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--only", choices=["decode", "prefill"])
    ap.add_argument("--sweep", choices=["decode", "prefill"])
    ap.add_argument("--grid", default=None,
                    help="with --sweep: one grid instead of the two built-in stages, e.g. "
                         "'SPLITS_PER_CU=1,2,4 MAX_SPLITS=16,32,64 FUSED_REDUCE=0,1'")
    ap.add_argument("--cases", default=None,
                    help="with --sweep or --only prefill: the shapes instead of the built-in "
                         "ones; decode BATCHxCTXxMAX_SEQ,... (six built in), prefill "
                         "N@CTX,... (sweep: 2048@0, 8192@0, 512@8192)")
    ap.add_argument("--capacity", type=int, default=0,
                    help="prefill: max_seq_len at least this, as a prefill graph captured for "
                         "that many tokens passes whatever the context (the kv of the "
                         "attn_prefill bucket)")
    ap.add_argument("--top", type=int, default=8, help="with --sweep: rows shown")
    ap.add_argument("--window", type=int, default=0,
                    help="prefill: a sliding window of this many keys (Gemma 3's local layers: "
                         "512)")
    ap.add_argument("--heads", default=None, metavar="H:HKV:D",
                    help="query heads, KV heads, head dim (default 32:8:128, Llama-3-8B; "
                         "Llama-3.2-1B is 32:8:64)")
    ap.add_argument("--fresh", action="store_true",
                    help="with --sweep prefill: time whole prompts (ctx 0) with their keys read "
                         "from this step's rows (attention(..., fresh=)), as the engine runs them")
    args = ap.parse_args()
    if args.heads:
        global H, HKV, D
        try:
            H, HKV, D = (int(x) for x in args.heads.split(":"))
        except ValueError:
            raise SystemExit(f"--heads: expected H:HKV:D, got {args.heads!r}") from None
        if min(H, HKV, D) < 1 or H % HKV:
            raise SystemExit(f"--heads: need H, HKV, D >= 1 and H a multiple of HKV, got {args.heads}")
    if args.window < 0:
        raise SystemExit(f"--window: must be >= 0, got {args.window}")
    if args.capacity < 0:
        raise SystemExit(f"--capacity: must be >= 0, got {args.capacity}")
    global WINDOW, CAPACITY, FRESH
    WINDOW, CAPACITY, FRESH = args.window, args.capacity, args.fresh
    if args.cases and not (args.sweep or args.only == "prefill"):
        raise SystemExit("--cases: only with --sweep or --only prefill")
    if args.grid and not args.sweep:
        raise SystemExit("--grid: only with --sweep")
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA or ROCm GPU; nothing to do")
        return
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    gen = torch.Generator().manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}  {args.dtype}  H={H} Hkv={HKV} D={D} block={BS}")
    if args.sweep:
        sweep(args.sweep, dtype, gen, args.grid, args.cases, args.top)
        return
    if args.only in (None, "decode"):
        run_decode(dtype, gen)
    if args.only in (None, "prefill"):
        run_prefill(dtype, gen, parse_prefill_cases(args.cases) if args.cases else PREFILL_CASES)


if __name__ == "__main__":
    main()
