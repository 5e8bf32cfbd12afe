"""Time candidate launch configs on the GPU you have and write a tuning table.

    python -m autotune.sweep --kernel linear_gemv --out my_table.json
    python -m autotune.sweep --kernel attn_prefill --kernel attn_decode        # -> user table
    FORGE_TUNING_TABLE=my_table.json forge generate ...                          # use it

For each problem of a kernel (autotune/spaces.py: representative shapes) every candidate of the
family's search space runs through the real launcher (forced with `tuning.override`), must
reproduce the current config's output, and is timed with triton.testing.do_bench (warm-up, then
the median; the GEMV, kgemm and decode-attention problems replay a CUDA graph instead).
Problems that share a bucket (attention's cases of one head shape) are scored together: the
mean over them of time / the current config's time. The best candidate per bucket is written as
a table entry with source "sweep <date> <device name>" (merged into --out if it exists), unless
no candidate beat the current config. Without --out the table goes to
~/.cache/forge/tuning/<arch>.json, which get_config reads as the user table. Runs only on a GPU.

What a sweep keeps:
- A candidate sets the keys its space varies, laid over the entry the tables give the bucket
  now (`current_entry`): keys no space varies (PDL, FUSE_NORM, KQ_T, ROPE_MIN_B, and PREFETCH /
  X_PRE / L2PF unless --gemv-prefetch / --gemv-x-pre / --gemv-l2pf make them axes) keep their
  values, in the timed config and in the entry written. The GEMV's candidates set ASYNC 0 (they
  are matmul.py's GEMV); an entry that sets ASYNC (kernels/gemv_async.py) is their baseline.
  With --gemv-async the shared-memory GEMV's own candidates (ASYNC, ASYNC_BN, ASYNC_WARPS) join
  them for Q4_K / Q8_0 on NVIDIA (bf16 / fp16 activations: float32 x never takes that kernel),
  those the shape or GPU cannot take left out (`async_fits`). Such a candidate also sets
  SPLIT_K 1, X_INT8 1 and X_PRE 1; where it wins, calls of the bucket that cannot take the
  kernel (a bias, a fused norm) run the Triton GEMV with those keys, untimed.
- A bucket is written only when its best candidate beats the current config by --min-gain
  (1% by default).
- The first table with an entry for a kernel serves every bucket of that kernel (for a kernel
  with exact dims, attention's head dim, every bucket of a head dim it has entries for), so
  before a kernel's (or a head dim's) first entry goes into the output table, the entries that
  serve it now are copied in (`seed_kernel`): those buckets keep their configs. A bucket the
  sweep adds also serves the shapes nearest to it (tuning's nearest-bucket rule), which a "*"
  entry or a farther bucket served before. Entries that name fewer dims than the kernel's
  buckets now do (a table from before attn_prefill's t or kv) get them, at each value the
  problems of their head dim use (`widen_entries`): otherwise they would stay nearest at every
  value of the missing dim.
- A new output table starts as a copy of the user table lookup reads now, if there is one.
  While the sweep writes the user table itself, progress goes to <name>.partial.json (moved into
  place at the end), so that no bucket's baseline is an earlier bucket's fresh winner.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from autotune import spaces


def _time(fn: Callable[[], Any], warmup: int, rep: int) -> float:
    """Median milliseconds of fn on the GPU (do_bench: warm-up ms, then rep ms of runs)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _time_graph(run: Callable[[], Any], warmup: int, rep: int) -> float:
    """Median milliseconds per call of run's `rotations` (or run itself) replayed in a CUDA
    graph (autotune.timing): no launch overhead, which would otherwise dominate a microsecond
    kernel. The graph holds every rotation (distinct weight copies), at least 16 calls in all."""
    from autotune.timing import graph_ms

    fns = getattr(run, "rotations", None) or [run]
    return graph_ms(fns, reps=max(10, rep // 5), repeat=max(1, -(-16 // len(fns))),
                    warm_replays=max(2, warmup // 10))


GRAPH_TIMED = ("linear_gemv", "linear_kq", "attn_decode")


def _timer_for(prob) -> Callable:
    """Graph replay for the kernels of a decode step (GEMV, kgemm, decode attention: no launch
    overhead in the time; the linear ones rotate weight copies), do_bench otherwise."""
    return _time_graph if prob.space_kernel in GRAPH_TIMED else _time


def current_entry(kernel: str, bucket: str, arch: str) -> dict:
    """The table keys lookup lays over the launcher default for `kernel` ("linear_gemv.Q4_K" or
    "rms_norm") at `bucket` on `arch` now, notes dropped: a per-type kernel's generic entry,
    then its own where it ranks (tuning.typed_wins), as matmul's launchers combine them."""
    from forge.kernels import tuning

    generic, dot, _ = kernel.partition(".")
    g = tuning.lookup(generic, bucket, arch) if dot else None
    t = tuning.lookup(kernel, bucket, arch)
    out: dict = {}
    if g is not None:
        out.update(g[3])
    if t is not None and tuning.typed_wins(g[0] if g is not None else "builtin", t[0]):
        out.update(t[3])
    return {k: v for k, v in out.items() if k not in tuning.NOTE_KEYS}


def async_fits(p, cands: list[dict], smem: int | None = None) -> list[dict]:
    """The candidates (laid over the current entry) that problem p can run as they say: one
    that sets ASYNC where the shared-memory GEMV cannot take the shape (kernels/gemv_async.py's
    `eligible`: x quantized to int8 first, whole steps, N a multiple of ASYNC_BN, the ring within
    `smem` bytes) would time the Triton GEMV under its name, so it is dropped. smem: this GPU's
    `gemv_async.smem_limit` when None (0 where it cannot run the kernel: none fits)."""
    if p.space_kernel != "linear_gemv":
        return cands
    from forge.kernels import dequant, gemv_async

    if smem is None:
        smem = gemv_async.smem_limit()
    tid = dequant.TYPE_IDS[p.kernel.partition(".")[2]]
    d = p.dims
    return [c for c in cands if not c.get("ASYNC") or gemv_async.eligible(
        tid, d["T"], d["N"], d["K"], c, bool(c.get("X_INT8")) and bool(c.get("X_PRE")), smem)]


def with_current(cands: list[dict], current: dict) -> list[dict]:
    """Each candidate laid over `current` (keys the space does not vary keep their values)."""
    return [{**current, **c} for c in cands]


def seed_kernel(table: dict, kernel: str, arch: str, bucket: str | None = None) -> int:
    """Copy into `table` the entries that serve `kernel` on `arch` now, unless `table` has the
    kernel already; returns how many. A kernel with exact dims (attention's head dim) is seeded
    per value: when `table` has the kernel but no entry with `bucket`'s head dim, the entries of
    that head dim in the table that serves `bucket` now are copied (a user table swept at d128
    only leaves d256 to the shipped table; a swept d256 bucket would otherwise serve every d256
    shape alone). For a per-type kernel ("linear_gemv.Q4_K") these are its
    own table's entries where they are laid over the generic kernel's (tuning.typed_wins),
    else the generic kernel's (which then decide alone: a generic entry of a higher-ranked
    table, or no per-type table at all). Each copy says where it came from.

    The copies keep every bucket of the serving table as it was. A bucket the sweep adds is new
    to the kernel, and by the nearest-bucket rule it also serves the shapes nearer to it than to
    any copied bucket (and those a "*" entry served)."""
    from forge.kernels import tuning

    have = table.get("kernels", {}).get(kernel)
    if have:
        return _seed_exact(table, kernel, arch, bucket, have) if bucket is not None else 0
    generic, dot, _ = kernel.partition(".")
    got = tuning.serving_table(kernel, arch)
    if dot:
        gen = tuning.serving_table(generic, arch)
        if gen is not None and (got is None or not tuning.typed_wins(gen[0], got[0])):
            got = gen
    return _copy_in(table, kernel, got, lambda b: True) if got is not None else 0


def _seed_exact(table: dict, kernel: str, arch: str, bucket: str, have: dict) -> int:
    """seed_kernel for a kernel `table` has: copy the entries of `bucket`'s exact-dim values
    (attention's head dim) when `table` has none of them."""
    from forge.kernels import tuning

    ex = tuning.exact_dims(kernel)
    want = {k: v for k, v in tuning.parse_bucket(bucket).items() if k in ex}
    if not want:
        return 0

    def same(key: str) -> bool:
        dims = tuning.parse_bucket(key)
        return all(dims.get(k, v) == v for k, v in want.items())

    if "*" in have or any(same(b) for b in have if b != "*"):
        return 0
    got = tuning.serving_table(kernel, arch, bucket)
    return _copy_in(table, kernel, got, lambda b: b != "*" and same(b)) if got is not None else 0


def _copy_in(table: dict, kernel: str, got: tuple, keep) -> int:
    """Copy the entries whose bucket `keep` accepts from `got` (tuning.serving_table's (level,
    path, source, entries)) into `table` for `kernel`, each noting where it came from; returns
    how many."""
    from forge.kernels import tuning

    level, path, source, entries = got
    try:  # a shipped table by its place in the package, a user's by its path
        path = f"forge/kernels/configs/{Path(path.split('#')[0]).relative_to(tuning.CONFIG_DIR)}" \
            + (f"#{path.split('#', 1)[1]}" if "#" in path else "")
    except ValueError:
        pass
    n = 0
    for b, e in entries.items():
        if keep(b):
            copy = _noted(e, f"copied from {path} ({level}) by autotune.sweep: not timed by the sweep")
            copy.setdefault("source", source or "(no source in the original table)")
            merge_entry(table, kernel, b, copy)
            n += 1
    return n


def _noted(entry: dict, note: str) -> dict:
    """A copy of a table entry whose comment starts with `note` (what the sweep did to it)."""
    return dict(entry, comment=f"{note}; {entry['comment']}" if entry.get("comment") else note)


def start_table(out_path: Path, user_path: Path, arch: str, family: str, device_name: str,
                date: str) -> tuple[dict, str]:
    """The table a sweep starts from, and a line saying what it is ("" for the output table as
    it is): the output table if it exists; else a copy of the user table lookup reads now (none
    where lookup ignores it: invalid or for another arch); else a new one. ValueError when the
    output table exists but is invalid or for another arch (the sweep would overwrite it)."""
    from forge.kernels import tuning

    def load(path: Path) -> dict:
        doc = json.loads(path.read_text())
        tuning.parse_table(doc, str(path))
        if doc.get("arch") not in (None, arch):
            raise ValueError(f"a table for {doc.get('arch')}, this GPU is {arch}")
        return doc

    fresh = new_table(arch, family, device_name, date)
    if out_path.exists():
        try:
            table, how = load(out_path), ""
        except (OSError, ValueError) as e:
            raise ValueError(f"{out_path}: {e}") from None
    elif user_path.exists():
        try:
            table = load(user_path)
            how = f"starting from a copy of the user table {user_path}, which lookup reads now"
        except (OSError, ValueError) as e:
            table = fresh
            how = f"not starting from the user table {user_path}, which lookup ignores: {e}"
    else:
        table, how = fresh, ""
    table["arch"], table["family"] = arch, family
    return table, how


def _close(a, b, tol: float) -> bool:
    import torch

    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    fin = torch.isfinite(b)
    if not torch.equal(fin, torch.isfinite(a)):
        return False
    if not fin.any():
        return True
    scale = b[fin].abs().max().clamp_min(1e-6)
    return bool(((a[fin] - b[fin]).abs().max() / scale) <= tol)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _subsample(cands: list[dict], limit: int | None) -> list[dict]:
    if not limit or len(cands) <= limit:
        return cands
    step = len(cands) / limit
    return [cands[int(i * step)] for i in range(limit)]


def sweep_bucket(probs: list[spaces.Problem], cands: list[dict], dev, dtype, *, warmup: int,
                 rep: int, timer=_time, progress=None) -> dict:
    """Time every candidate on the problems of one bucket (one kernel; e.g. attention's prefill
    and chunked cases of one head shape). A candidate must reproduce the current config's output
    on every problem; its score is the mean over the problems of its time / the current
    config's, so no problem's scale dominates. Returns {"best": cfg|None, "best_score",
    "best_ms": [per problem], "shipped_ms": [per problem], "tried", "rejected": [(cfg, why)]}."""
    from forge.kernels import tuning

    kernel = probs[0].kernel
    runs = [p.setup(dev, dtype) for p in probs]
    refs = [_first(run()) for run in runs]  # the current config: baseline and reference
    shipped = [timer(run, warmup, rep) for run in runs]
    best, best_score, best_ms, rejected = None, math.inf, None, []
    for cfg in cands:
        try:
            with tuning.override({kernel: {"*": cfg}}):
                why = next((f"output differs from the current config's ({p.name})"
                            for p, run, ref in zip(probs, runs, refs)
                            if not _close(_first(run()), ref, p.tol)), None)
                if why is not None:
                    rejected.append((cfg, why))
                    continue
                ms = [timer(run, warmup, rep) for run in runs]
        except Exception as e:  # noqa: BLE001 - out of resources, compile errors: skip the config
            rejected.append((cfg, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"))
            continue
        finally:
            if progress is not None:
                progress.update(len(probs))
        score = sum(m / s for m, s in zip(ms, shipped)) / len(ms)
        if score < best_score:
            best, best_score, best_ms = cfg, score, ms
    return {"best": best, "best_score": best_score, "best_ms": best_ms, "shipped_ms": shipped,
            "tried": len(cands), "rejected": rejected}


def group_by_bucket(probs: list[spaces.Problem]) -> list[list[spaces.Problem]]:
    """Problems that land in the same (table kernel, bucket), in first-seen order: one entry
    is written per group, so a group's candidates are scored on all its problems."""
    from forge.kernels import tuning

    groups: dict[tuple[str, str], list] = {}
    for p in probs:
        groups.setdefault((p.kernel, tuning.bucket(**p.dims)), []).append(p)
    return list(groups.values())


def widen_entries(table: dict, kernel: str, probs: list[spaces.Problem]) -> int:
    """Give `kernel`'s entries in `table` that leave out a dim its problems' buckets name (a table
    from before the launcher gained it, e.g. attn_prefill's t) that dim, once per value the
    problems use, so that all of the kernel's entries name the same dims: an entry without the
    dim is as near at any value of it and would take shapes from the sweep's new buckets.
    An entry takes the values of the problems that share its exact dims (attention's head dim)
    where there are any. Returns how many entries were widened."""
    from forge.kernels import tuning

    entries = table.get("kernels", {}).get(kernel)
    buckets = [tuning.parse_bucket(tuning.bucket(**q.dims)) for q in probs if q.kernel == kernel]
    if not entries or not buckets:
        return 0
    names = set(buckets[0])
    widened = 0
    for key in list(entries):
        if key == "*":
            continue
        dims = tuning.parse_bucket(key)
        missing = sorted(names - dims.keys())
        if not missing or not dims.keys() <= names:
            continue
        e = entries.pop(key)
        note = f"widened from {key} by autotune.sweep (at the {', '.join(missing)} of its problems)"
        ex = [k for k in tuning.exact_dims(kernel) if k in dims]
        own = [b for b in buckets if all(b[k] == dims[k] for k in ex)] or buckets
        for combo in sorted({tuple(b[m] for m in missing) for b in own}):
            nb = tuning.bucket(**dims, **dict(zip(missing, combo)))
            if nb not in entries:
                entries[nb] = _noted(e, note)
        widened += 1
    return widened


def merge_entry(table: dict, kernel: str, bucket: str, entry: dict) -> None:
    table.setdefault("kernels", {}).setdefault(kernel, {})[bucket] = entry


def new_table(arch: str, family: str, device_name: str, date: str) -> dict:
    return {"arch": arch, "family": family, "source": f"sweep {date} {device_name}", "kernels": {}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autotune.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", required=True,
                    help=f"kernel to sweep (repeatable): {', '.join(spaces.SWEEPABLE)}")
    ap.add_argument("--out", help="tuning table to write or merge into "
                    "(default ~/.cache/forge/tuning/<arch>.json, the user table)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                    help="activation dtype of the problems (default bfloat16)")
    ap.add_argument("--types", default=",".join(spaces.SWEEP_TYPES),
                    help="GGML types for linear_* sweeps (comma-separated)")
    ap.add_argument("--gemv-stages", default="1",
                    help="num_stages values for the NVIDIA linear_gemv candidates (e.g. 1,2,3); "
                    "the GEMV has no tl.dot, so on sm90 every value compiles to the same code "
                    "(see spaces.space)")
    ap.add_argument("--gemv-prefetch", default=None,
                    help="PREFETCH values for the NVIDIA linear_gemv candidates (e.g. 0,1,2,3,4: "
                    "the next step's weight loads issued during each decode; see matmul.py); "
                    "default: each bucket keeps its current value")
    ap.add_argument("--gemv-x-pre", default=None,
                    help="X_PRE values for the NVIDIA int8 linear_gemv candidates (e.g. 0,1: x "
                    "quantized by a kernel before the GEMV; the timed copies share one x, so one "
                    "quantization serves them all, as a producer kernel's codes do in a model); "
                    "default: each bucket keeps its current value")
    ap.add_argument("--gemv-l2pf", default=None,
                    help="L2PF values for the NVIDIA linear_gemv candidates (e.g. 0,1,2: the "
                    "weights prefetched into L2 that many steps ahead; see matmul.py); default: "
                    "each bucket keeps its current value")
    ap.add_argument("--gemv-async", default=None,
                    help="ASYNC values (ring slots, e.g. 3,4) for the shared-memory GEMV of Q4_K / "
                    "Q8_0 (NVIDIA sm80+, kernels/gemv_async.py): candidates over its rows and "
                    "warps per program are added to the Triton GEMV's; default: none (a bucket "
                    "whose entry sets ASYNC still times it as the baseline)")
    ap.add_argument("--shapes", default=None,
                    help="only these N x K problems, e.g. 14336x4096,4096x14336 (linear_* sweeps)")
    ap.add_argument("--max-candidates", type=int, default=None,
                    help="time at most this many candidates per bucket (evenly spaced)")
    ap.add_argument("--min-gain", type=float, default=0.01,
                    help="write a bucket only if its best candidate beats the current config by "
                    "this fraction of its time (default 0.01: timing noise is not a win)")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms (default 25)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measuring time, ms (default 100)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.min_gain < 1.0:
        ap.error(f"--min-gain: a fraction in [0, 1), got {args.min_gain}")
    for k in args.kernel:
        if k not in spaces.SWEEPABLE:
            ap.error(f"--kernel: {k!r} cannot be swept (choose from {', '.join(spaces.SWEEPABLE)})")
    from forge.kernels.tuning import ENUM_KEYS, L2PF_VALUES

    def ints(opt: str, text: str | None, allowed=None):
        if text is None:
            return None
        try:
            vals = tuple(int(v) for v in text.split(","))
        except ValueError:
            ap.error(f"{opt}: expected comma-separated integers, got {text!r}")
        if allowed is not None and not set(vals) <= set(allowed):
            ap.error(f"{opt}: values are {allowed}, got {text!r}")
        return vals

    gemv_axes = {"gemv_stages": ints("--gemv-stages", args.gemv_stages),
                 "gemv_prefetch": ints("--gemv-prefetch", args.gemv_prefetch, ENUM_KEYS["PREFETCH"]),
                 "gemv_x_pre": ints("--gemv-x-pre", args.gemv_x_pre, ENUM_KEYS["X_PRE"]),
                 "gemv_l2pf": ints("--gemv-l2pf", args.gemv_l2pf, L2PF_VALUES)}
    async_slots = ints("--gemv-async", args.gemv_async, ENUM_KEYS["ASYNC"])
    if async_slots and args.dtype == "float32":
        print("--gemv-async: float32 activations never take the shared-memory GEMV (it reads "
              "int8 x); no such candidates", file=sys.stderr)

    from forge.runtime import device

    info = device.detect()
    if info is None:
        print("autotune.sweep times kernels on a GPU, and torch sees no CUDA/ROCm GPU here.\n"
              "On a machine without one, `python -m autotune.report --target gfx942` still shows "
              "registers, LDS and spills of every shipped config.", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from forge.kernels import tuning

    dev = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    date = _dt.date.today().isoformat()
    src = f"sweep {date} {info.name}"
    user_path = tuning.user_table_path(info.arch)        # ($FORGE_TUNING_TABLE or ~/.cache/...)
    out_path = Path(args.out).expanduser() if args.out else user_path
    writes_user = out_path.resolve() == user_path.resolve()
    try:
        table, how = start_table(out_path, user_path, info.arch, info.family, info.name, date)
    except ValueError as e:
        print(f"--out: {e}", file=sys.stderr)
        return 2
    if how:
        print(how)
    # Progress goes to a side file while the sweep runs when the output is the table lookup reads
    # (else each bucket's winner would become a later bucket's baseline); moved into place at
    # the end. Kept if the sweep dies: nothing measured is lost.
    progress_path = out_path.with_name(out_path.stem + ".partial.json") if writes_user else out_path
    types = tuple(t for t in args.types.split(",") if t)
    if "linear_kq" in args.kernel and info.vendor != "nvidia":
        print("--kernel linear_kq: kgemm runs on NVIDIA only (this GPU is "
              f"{info.vendor}); on AMD Q4_K / Q6_K batch decode takes linear_gemm", file=sys.stderr)
        return 2
    print(f"sweeping on {info.name} ({info.arch}, {info.family}, {info.num_cus} CUs, "
          f"wave{info.warp_size}, {info.lds_bytes // 1024} KiB LDS), activations {args.dtype}")
    for kernel in args.kernel:
        probs = spaces.problems(kernel, types)
        if args.shapes and kernel.startswith("linear"):
            keep = {tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",") if sh}
            probs = [p for p in probs if (p.dims.get("N"), p.dims.get("K")) in keep]
        plan = []
        for group in group_by_bucket(probs):
            p = group[0]
            cands = spaces.space(p.space_kernel, info.family, sub=p.sub, lds_bytes=info.lds_bytes,
                                 elem=torch.tensor([], dtype=dtype).element_size(), warp=info.warp_size,
                                 **({"int8": p.extra["int8"]} if "int8" in p.extra else {}),
                                 **(gemv_axes if p.space_kernel == "linear_gemv" else {}),
                                 **({"gemv_async": async_slots} if p.extra.get("async") and
                                    info.vendor == "nvidia" and args.dtype != "float32"
                                    else {}))
            cur = {**current_entry(p.kernel, tuning.bucket(**p.dims), info.arch),
                   **p.extra.get("fixed", {})}
            cands = [c for c in with_current(cands, cur) if c != cur]   # cur is the baseline
            for q in group:                     # every problem of the bucket times them all
                cands = async_fits(q, cands)
            plan.append((group, _subsample(cands, args.max_candidates)))
        total = sum(len(c) * len(g) for g, c in plan)
        with tqdm(total=total, desc=kernel, unit="run") as bar:
            for group, cands in plan:
                p = group[0]
                names = " + ".join(q.name for q in group)
                bar.set_postfix_str(names)
                r = sweep_bucket(group, cands, dev, dtype, warmup=args.warmup, rep=args.rep,
                                 timer=_timer_for(p), progress=bar)
                b = tuning.bucket(**p.dims)
                if r["best"] is None:
                    tqdm.write(f"  {names}: no candidate ran correctly; bucket {b} left as is")
                    continue
                times = ", ".join(f"{q.name} {m * 1e3:.1f} us (current {s * 1e3:.1f})"
                                  for q, m, s in zip(group, r["best_ms"], r["shipped_ms"]))
                tqdm.write(f"  [{b}] {times}: {1 / r['best_score']:.2f}x, "
                           f"{len(r['rejected'])} rejected")
                if r["best_score"] > 1.0 - args.min_gain:
                    tqdm.write(f"  [{b}]: no candidate beat the current config by "
                               f"{args.min_gain:.0%}; left as is")
                    continue
                entry = dict(r["best"])
                entry["source"] = src
                seeded = seed_kernel(table, p.kernel, info.arch, b)
                if seeded:
                    tqdm.write(f"  {p.kernel}: copied the {seeded} entries that serve it now "
                               "into the table (their buckets keep their configs)")
                widened = widen_entries(table, p.kernel, probs)
                if widened:
                    tqdm.write(f"  {p.kernel}: {widened} entries named fewer dims than its "
                               "buckets; each now names them, at the values of the problems")
                entry["comment"] = f"median {times}, {r['tried']} candidates"
                merge_entry(table, p.kernel, b, entry)
                progress_path.parent.mkdir(parents=True, exist_ok=True)
                progress_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    tuning.parse_table(table, str(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    if progress_path != out_path:
        progress_path.unlink(missing_ok=True)
    tuning.clear_cache()
    print(f"wrote {out_path}" + ("" if writes_user else
                                 f"; use it with FORGE_TUNING_TABLE={out_path} or copy it to {user_path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
