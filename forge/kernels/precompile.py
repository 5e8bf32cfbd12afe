"""Compile a warm-up's kernels ahead of it, on many threads.

A first start on an empty Triton cache compiles each kernel variant the warm-up launches, one
after another: a launch compiles its kernel before it runs, and the next launch waits for it
(H100, Gemma 3 1B-shaped Q4_K_M, run 26: 87 compiles, 72.8 s of a 92.4 s load). Triton
compiles from threads of one process in parallel (24 sm90 attention builds: 50.7 s one after
another, 10.9 s from 12 threads), but only if it is told every variant before the first is
needed.

`ahead(workers)` does that. Inside it, each Triton launch from this thread compiles its kernel
without running it (`JITFunction.run(warmup=True)`), on a pool of `workers` threads (Triton's
`AsyncCompileMode`). On exit it waits for every compile and puts each kernel into its
JITFunction's cache, where the real launches after it find them. A dry run of the warm-up's
forward passes inside it (Engine._warmup) reaches the variants the warm-up launches:
- a variant is picked on the host, from shapes, dtypes, pointer alignment and integer
  arguments, never from data on the device;
- so a dry pass needs only the same buffers and sizes as the real one.
Its buffers hold garbage. The only code that reads them runs between launches as torch ops (adds,
cuBLAS matmuls, index_select with indices made on the host), so nothing takes a data-dependent
path or asserts on the device.

`capturing(device)` is the question the kernels' launchers ask to pick a graph capture's path
(matmul's dequantize + cuBLAS at T >= DEQUANT_T, PDL in mode "decode"). `as_if_captured()`
makes it answer True outside a capture: the dry pass of a graph's step, and the eager warm runs
before each capture (runtime/graphs.py), compile exactly the variants the capture launches.
Memory rules that concern real captures only (scratch buffers, rope's frequency cache, xquant's
recorded codes) ask `stream_capturing`.

A load that warmed up completely leaves a mark in Triton's cache directory (`marker`), named by
a hash of everything that picks its variants: the model's config and weight layouts, the
engine's sizes, forge's source, Triton, torch, the GPU, FORGE_* / TRITON_* variables and user
tuning tables. A later load with the same mark skips the dry pass: every kernel it would
compile is on disk already (run 27, Gemma 3 1B-shaped: a dry pass on a warm cache costs 2.3-3.4
s of a 10-15 s load). If something that picks a variant is missing from the hash, that load
compiles the variant as it goes: slower, never wrong.

Threads: `FORGE_COMPILE_THREADS` (default: the usable CPUs, at most 16; 0 or 1: no compile
ahead, the warm-up compiles as it goes). Needs a Triton with `triton.runtime._async_compile`
(3.6 was run on an H100, 3.9's source was read); elsewhere `supported()` is False and nothing
changes. Measured (run 27, H100, empty cache): Gemma 3 1B-shaped Q4_K_M loads in 33-38 s
instead of 80 (86 variants, none compiled after the dry pass), Llama-3-8B-shaped in 34 s
instead of 65.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

from forge.kernels import env

# the Job of the `ahead()` active in this context (thread), None outside one
_JOB: contextvars.ContextVar = contextvars.ContextVar("forge_compile_ahead_job", default=None)
_local = threading.local()      # .pretend: depth of as_if_captured() on this thread
_patched = False
_lock = threading.Lock()


def stream_capturing(device=None) -> bool:
    """Whether the current stream is really being captured into a CUDA/HIP graph: the question
    of memory rules (a capture's buffers belong to its graph: scratch buffers, cached tables,
    recorded quantizations). `device`: a torch device (non-"cuda" ones never capture) or None.
    False without CUDA."""
    import torch

    if device is not None and device.type != "cuda":
        return False
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def capturing(device=None) -> bool:
    """Whether launches now should take a CUDA/HIP graph capture's path: the current stream is
    being captured (`stream_capturing`), or we are inside `as_if_captured()` on this thread.
    `device` as for `stream_capturing`."""
    if device is not None and device.type != "cuda":
        return False
    return bool(getattr(_local, "pretend", 0)) or stream_capturing(device)


@contextlib.contextmanager
def as_if_captured():
    """`capturing()` answers True on this thread inside."""
    _local.pretend = getattr(_local, "pretend", 0) + 1
    try:
        yield
    finally:
        _local.pretend -= 1


def dry() -> bool:
    """Whether Triton launches from this thread now compile only (inside `ahead()`)."""
    return _JOB.get() is not None


def supported() -> bool:
    """Whether this Triton has what `ahead()` uses (and kernels compile at all: not under
    TRITON_INTERPRET, where a launch that only compiles does not exist)."""
    if env.interpreting():
        return False
    try:
        import inspect

        from triton.runtime import _async_compile
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    return (hasattr(_async_compile, "AsyncCompileMode") and hasattr(_async_compile, "active_mode")
            and "warmup" in inspect.signature(JITFunction.run).parameters)


def workers() -> int:
    """Compile threads for `ahead()` (FORGE_COMPILE_THREADS, else the usable CPUs, at most
    16); 0 or 1 means compile as the warm-up goes."""
    env = os.environ.get("FORGE_COMPILE_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FORGE_COMPILE_THREADS must be a whole number (0 or 1: off), "
                             f"got {env!r}") from None
        if n < 0:
            raise ValueError(f"FORGE_COMPILE_THREADS must be >= 0, got {n}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(16, cpus)


def _patch() -> None:
    """Route JITFunction.run through a check of `dry()` (once per process): dry launches become
    warm-ups (compile, no launch). Launches from other threads, or outside `ahead()`, pass
    through unchanged."""
    global _patched
    with _lock:
        if _patched:
            return
        from triton.runtime.jit import JITFunction

        run = JITFunction.run

        def forge_run(self, *args, grid, warmup, **kwargs):
            if _JOB.get() is not None:
                warmup = True
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

        forge_run.__wrapped__ = run
        forge_run.__doc__ = run.__doc__
        JITFunction.run = forge_run

        # Triton 3.6 caches an async compile's kernel only when it is finalized, so each dry
        # launch of a variant already submitted would rebuild its source key (~1 ms, thousands
        # of launches per dry pass): keep the pending compile in the cache meanwhile, as 3.9
        # does. The job notes each placeholder (ours or 3.9's), and `_scrub` takes out those
        # not finalized when it ends.
        import inspect

        from triton.runtime import _async_compile

        do = getattr(JITFunction, "_do_compile", None)
        future = getattr(_async_compile, "FutureKernel", None)
        if do is not None and future is not None and list(inspect.signature(do).parameters)[:4] \
                == ["self", "key", "signature", "device"]:
            def forge_do_compile(self, key, signature, device, *args, **kwargs):
                k = do(self, key, signature, device, *args, **kwargs)
                job = _JOB.get()
                if job is not None and isinstance(k, future):
                    cache = self.device_caches[device][0]
                    job.parked.append((cache, key, cache.setdefault(key, _Pending(k))))
                return k

            forge_do_compile.__wrapped__ = do
            JITFunction._do_compile = forge_do_compile
        _patched = True


class _Pending:
    """A compile in flight, in a kernel's cache: a launch from another thread that finds it
    waits for the compile (as Triton 3.9's own placeholder does)."""

    def __init__(self, future_kernel):
        self.future_kernel = future_kernel

    def __getattr__(self, name):
        return getattr(self.future_kernel.result(), name)


class Job:
    """What one `ahead()` compiled: `submitted` variants, `failed` of them (each compiles again,
    and raises its error, at its first real launch), seconds spent waiting for them after the
    dry pass (`wait_s`)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.submitted = 0
        self.failed = 0
        self.wait_s = 0.0
        self.parked: list = []   # (kernel cache, key, placeholder) of each compile submitted


@contextlib.contextmanager
def ahead(num_workers: int | None = None, progress: bool = False, desc: str = "compiling kernels"):
    """Inside, Triton launches from this thread compile their kernels on `num_workers` threads
    (default `workers()`) instead of running; on a normal exit, wait for them all (a progress bar
    with `progress`) and keep each in its kernel's cache. Yields a `Job`. An exception inside (or
    while waiting) cancels the compiles not started, waits for those running (what they built
    stays in Triton's disk cache) and leaves no placeholder in a kernel's cache."""
    import time
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from triton.runtime import _async_compile

    n = workers() if num_workers is None else int(num_workers)
    if n < 1:
        raise ValueError(f"num_workers must be >= 1, got {n}")
    if _JOB.get() is not None:
        raise RuntimeError("precompile.ahead() is already active on this thread")
    _patch()
    job = Job(n)
    pool = ThreadPoolExecutor(n, thread_name_prefix="forge-compile")
    mode = _async_compile.AsyncCompileMode(pool)
    # set the mode ourselves rather than `with mode`: Triton 3.6's __exit__ leaves it active
    # when a compile failed
    mode_token = _async_compile.active_mode.set(mode)
    job_token = _JOB.set(job)
    cancel = True       # until every compile was waited for: an exception starts no more
    try:
        yield job
        _JOB.reset(job_token)
        job_token = None
        futures = list(mode.raw_futures)
        job.submitted = len(futures)
        t0 = time.perf_counter()
        bar = None
        if progress and futures:
            from tqdm import tqdm

            bar = tqdm(total=len(futures), desc=f"{desc} ({n} threads)", unit="kernel",
                       file=sys.stderr, leave=False)
        for f in as_completed(futures):
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        cancel = False
        # finalizing puts each kernel into its cache. (Triton 3.9's FutureKernel.result() drops
        # its future before it sets the kernel: another thread launching the same variant in
        # that instant can fail. Launches from other threads during a load are not expected.)
        for f in futures:
            try:
                mode.future_kernels[f._key].result()
            except Exception:  # noqa: BLE001 - compiled again, and raised, at its launch
                job.failed += 1
        job.wait_s = time.perf_counter() - t0
    finally:
        if job_token is not None:
            _JOB.reset(job_token)
        _async_compile.active_mode.reset(mode_token)
        pool.shutdown(wait=True, cancel_futures=cancel)
        _scrub(job)


def _scrub(job: Job) -> None:
    """Take the job's placeholders that were not finalized (a failed or cancelled compile) out
    of their kernels' caches, so that the kernel's next launch compiles it (and raises its
    error) itself. Only this job's: another thread's `ahead()` keeps its own."""
    for cache, key, placeholder in job.parked:
        if cache.get(key) is placeholder and (isinstance(placeholder, _Pending)
                                              or getattr(placeholder, "kernel", 1) is None):
            del cache[key]
    job.parked.clear()


# ------------------------------------------------------------------------------------------------
# marks of complete warm-ups


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of forge's Python source and shipped tuning tables."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    files = sorted(root.rglob("*.py")) + sorted((root / "kernels" / "configs").glob("*.json"))
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _user_tables_digest() -> str:
    h = hashlib.sha256()
    env = os.environ.get("FORGE_TUNING_TABLE")
    paths = [Path(env).expanduser()] if env else \
        sorted((Path.home() / ".cache" / "forge" / "tuning").glob("*.json"))
    for p in paths:
        try:
            h.update(str(p).encode() + p.read_bytes())
        except OSError:
            pass
    return h.hexdigest()


def marker(parts, device) -> Path | None:
    """The mark a complete warm-up of `parts` (the engine's description of its model and
    sizes: anything repr-able) on torch `device` leaves, or None where marks are not kept: a
    custom or remote Triton cache manager, or in-memory tuning overrides (autotune sweeps)."""
    if os.environ.get("TRITON_CACHE_MANAGER") or os.environ.get("TRITON_REMOTE_CACHE_BACKEND"):
        return None
    from forge.kernels import tuning

    if tuning._overrides:
        return None
    import torch
    import triton

    from forge.runtime import device as devinfo

    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(("FORGE_", "TRITON_"))
                 and k != "FORGE_COMPILE_THREADS")
    # name; the current device's arch (gfx targets of one capability differ), CUs (attention
    # splits), ... (the backend made `device` the current one)
    gpu = (torch.cuda.get_device_name(device), repr(devinfo.detect()), torch.version.cuda,
           torch.version.hip)
    key = repr((parts, triton.__version__, torch.__version__, gpu, env, _user_tables_digest(),
                _source_digest()))
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(triton.knobs.cache.dir) / "forge-warm" / f"{name}.json"


def leave_mark(path: Path | None, record: dict) -> None:
    """Write the mark (atomically; a cache directory that cannot be written just keeps none)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, sort_keys=True, default=str))
        os.replace(tmp, path)
    except OSError:
        pass
