"""Host-side hiccup diagnostics: what else ran while a timed region ran.

    with HiccupRecorder(device=0) as rec:
        ...timed work...
    rec.summary()  # {"gc_passes": 1, "gc_ms_max": 87.3, "jit_compiles": [], ...}

While active, a recorder notes

- Python garbage-collector passes (`gc.callbacks`): how many per generation and how long each
  took; a generation-2 pass over the heap of a loaded model can take tens of milliseconds;
- Triton JIT cache misses, i.e. kernel (re-)specialisations compiled or loaded from the disk
  cache in the region (`triton.knobs.runtime.jit_cache_hook` / `jit_post_compile_hook`), with
  their durations; disk-cache hits (`triton.knobs.compilation.listener`) and kernel binary
  loads (`kernel_load_start_hook` / `kernel_load_end_hook`) where the installed Triton has
  them. Any hook already installed is chained (called first, its result returned) and put
  back on exit. A hook the installed Triton lacks is reported as "unavailable" in
  `summary()["jit"]`; Triton is only hooked if something already imported it;
- the torch CUDA caching allocator's counters (`torch.cuda.memory_stats`): new cudaMalloc
  segments, segments freed (cudaFree, which synchronizes) and allocation retries (an allocation
  that failed, freed the cache and tried again), when torch has already initialized CUDA;
- the span on the GPU's current stream between the region's start and end (CUDA events, when
  torch has initialized CUDA; `gpu_ms`), the calling thread's CPU time (`cpu_ms`), the
  process's page faults and involuntary context switches (`resource.getrusage`), for
  "something else": a repetition slower in `wall_ms` with none of the above is a GPU-side or
  driver stall, or a host stall that none of these counters sees.

Entering and leaving cost microseconds (plus one `memory_stats()` call on CUDA); nothing is
done inside the region except the callbacks above.
"""
from __future__ import annotations

import gc
import sys
import time
from typing import Any

__all__ = ["HiccupRecorder", "describe", "freeze_gc"]

_GC_SLOW_MS = 10.0


def freeze_gc() -> int:
    """Collect, then move every object still alive into the collector's permanent generation
    (`gc.freeze()`), so that later passes do not walk the long-lived objects of a loaded model
    (as vLLM does after graph capture). Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


# --------------------------------------------------------------------------------------------
# Triton hooks
# --------------------------------------------------------------------------------------------

class _SlotHook:
    """One `Optional[callable]` hook slot (e.g. `knobs.runtime.jit_cache_hook`) replaced by
    `ours`, which calls the previous hook first and returns its result."""

    def __init__(self, owner: Any, attr: str, ours):
        self.owner, self.attr = owner, attr
        self.prev = getattr(owner, attr)
        self.active = True

        def hook(*args, **kwargs):
            res = self.prev(*args, **kwargs) if self.prev is not None else None
            if self.active:
                try:
                    ours(*args, **kwargs)
                except Exception:  # never break a compile for a diagnostic
                    pass
            return res

        self.hook = hook
        setattr(owner, attr, hook)

    def remove(self) -> None:
        self.active = False  # if someone chained onto us, we become a pass-through
        if getattr(self.owner, self.attr, None) is self.hook:
            setattr(self.owner, self.attr, self.prev)


class _ChainHook:
    """One `HookChain` slot (`.add` / `.remove`)."""

    def __init__(self, chain: Any, ours):
        self.chain = chain

        def hook(*args, **kwargs):
            try:
                ours(*args, **kwargs)
            except Exception:
                pass

        self.hook = hook
        chain.add(hook)

    def remove(self) -> None:
        self.chain.remove(self.hook)


def _install(owner: Any, attr: str, ours):
    """Hook `owner.attr`, or None when that Triton has no such hook."""
    if owner is None or not hasattr(owner, attr):
        return None
    cur = getattr(owner, attr)
    if hasattr(cur, "add") and hasattr(cur, "remove") and callable(cur):
        return _ChainHook(cur, ours)
    if cur is None or callable(cur):
        return _SlotHook(owner, attr, ours)
    return None


def _kernel_name(kwargs: dict) -> str:
    fn = kwargs.get("fn")
    name = getattr(fn, "name", None)
    if name is None:
        jf = getattr(fn, "jit_function", fn)
        name = getattr(getattr(jf, "fn", jf), "__name__", None)
    return str(name or kwargs.get("repr") or "?")


# --------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------

def _rusage() -> tuple[int, int, int] | None:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_majflt, r.ru_minflt, r.ru_nivcsw
    except Exception:
        return None


_CUDA_KEYS = {"cuda_segments_allocated": "segment.all.allocated",
              "cuda_segments_freed": "segment.all.freed",
              "alloc_retries": "num_alloc_retries"}


class HiccupRecorder:
    """Context manager; see the module docstring. `summary()` after (or during) the region.

    device: the torch device whose allocator counters to read (None: the current one).
    triton: True hooks Triton (importing it), False never, None (default) only if imported.
    """

    def __init__(self, device: Any = None, *, triton: bool | None = None):
        self.device = device
        self.want_triton = triton
        self._reset()

    def _reset(self) -> None:
        self.gc_events: list[tuple[int, float]] = []   # (generation, ms)
        self._gc_t0: float | None = None
        self._gc_gen = 0
        self.jit_events: list[dict] = []               # {"name", "ms"}
        self._jit_open: dict[int, tuple[str, float]] = {}
        self.jit_disk_hits = 0
        self.kernel_loads: list[dict] = []
        self._load_t0: dict[str, float] = {}
        self.jit_status = "not loaded"
        self._hooks: list = []
        self._cuda0: dict[str, int] | None = None
        self._cuda1: dict[str, int] | None = None
        self._ru0 = self._ru1 = None
        self._t0 = self._t1 = None
        self._cpu0 = self._cpu1 = None
        self._ev0 = self._ev1 = None
        self._gpu_ms: float | None = None

    # -- gc ---------------------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_gen = int(info.get("generation", 0))
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            self.gc_events.append((self._gc_gen, 1e3 * (time.perf_counter() - self._gc_t0)))
            self._gc_t0 = None

    # -- triton -----------------------------------------------------------------------------
    def _on_jit_miss(self, *args, **kwargs) -> None:
        name = _kernel_name(kwargs)
        self._jit_open[id(kwargs.get("key"))] = (name, time.perf_counter())
        self.jit_events.append({"name": name, "ms": None})

    def _on_jit_compiled(self, *args, **kwargs) -> None:
        opened = self._jit_open.pop(id(kwargs.get("key")), None)
        if opened is None:
            self.jit_events.append({"name": _kernel_name(kwargs), "ms": None})
            return
        name, t0 = opened
        for ev in reversed(self.jit_events):
            if ev["name"] == name and ev["ms"] is None:
                ev["ms"] = round(1e3 * (time.perf_counter() - t0), 3)
                break

    def _on_compile_listener(self, *args, **kwargs) -> None:
        if kwargs.get("cache_hit"):
            self.jit_disk_hits += 1

    def _on_load_start(self, module=None, function=None, name=None, *args, **kwargs) -> None:
        self._load_t0[str(name)] = time.perf_counter()

    def _on_load_end(self, module=None, function=None, name=None, *args, **kwargs) -> None:
        t0 = self._load_t0.pop(str(name), None)
        self.kernel_loads.append({"name": str(name),
                                  "ms": None if t0 is None else round(1e3 * (time.perf_counter() - t0), 3)})

    def _install_triton(self) -> None:
        if self.want_triton is False:
            self.jit_status = "off"
            return
        if self.want_triton is None and "triton" not in sys.modules:
            self.jit_status = "not loaded"
            return
        try:
            import triton
        except Exception:
            self.jit_status = "unavailable: triton not importable"
            return
        knobs = getattr(triton, "knobs", None)
        runtime = getattr(knobs, "runtime", None)
        compilation = getattr(knobs, "compilation", None)
        missing = []
        for owner, attr, fn in [(runtime, "jit_cache_hook", self._on_jit_miss),
                                (runtime, "jit_post_compile_hook", self._on_jit_compiled),
                                (compilation, "listener", self._on_compile_listener),
                                (runtime, "kernel_load_start_hook", self._on_load_start),
                                (runtime, "kernel_load_end_hook", self._on_load_end)]:
            try:
                h = _install(owner, attr, fn)
            except Exception:
                h = None
            if h is None:
                missing.append(attr)
            else:
                self._hooks.append(h)
        if "jit_cache_hook" in missing:
            self.jit_status = "unavailable"
        elif missing:
            self.jit_status = "ok (no " + ", ".join(missing) + ")"
        else:
            self.jit_status = "ok"

    # -- cuda -------------------------------------------------------------------------------
    def _cuda_stats(self) -> dict[str, int] | None:
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        try:
            if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return None
            st = torch.cuda.memory_stats(self.device)
        except Exception:
            return None
        out = {k: int(st.get(v, 0)) for k, v in _CUDA_KEYS.items()}
        try:  # pinned host allocator: cudaHostAlloc calls (torch >= 2.6)
            out["cuda_host_allocs"] = int(torch.cuda.host_memory_stats().get("num_host_alloc", 0))
        except Exception:
            pass
        return out

    def _cuda_event(self):
        torch = sys.modules.get("torch")
        if torch is None or self._cuda0 is None:
            return None
        try:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        except Exception:
            return None

    # -- context manager --------------------------------------------------------------------
    def __enter__(self) -> "HiccupRecorder":
        self._reset()
        self._install_triton()
        self._cuda0 = self._cuda_stats()
        self._ru0 = _rusage()
        gc.callbacks.append(self._on_gc)
        self._ev0 = self._cuda_event()
        self._cpu0 = time.thread_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._t1 = time.perf_counter()
        self._cpu1 = time.thread_time()
        self._ev1 = self._cuda_event()
        try:
            gc.callbacks.remove(self._on_gc)
        except ValueError:
            pass
        self._ru1 = _rusage()
        self._cuda1 = self._cuda_stats()
        for h in reversed(self._hooks):
            try:
                h.remove()
            except Exception:
                pass
        self._hooks = []

    def _gpu_span_ms(self) -> float | None:
        """Milliseconds between the events recorded on the current stream at enter and exit
        (waits for the exit event: call after the region)."""
        if self._gpu_ms is None and self._ev0 is not None and self._ev1 is not None:
            try:
                self._ev1.synchronize()
                self._gpu_ms = round(float(self._ev0.elapsed_time(self._ev1)), 3)
            except Exception:
                self._ev0 = None
        return self._gpu_ms

    def summary(self) -> dict:
        gcs = self.gc_events
        by_gen = [0, 0, 0]
        ms_gen = [0.0, 0.0, 0.0]
        for g, ms in gcs:
            g = min(max(g, 0), 2)
            by_gen[g] += 1
            ms_gen[g] += ms
        out: dict[str, Any] = {
            "wall_ms": None if self._t0 is None else round(1e3 * ((self._t1 or time.perf_counter()) - self._t0), 3),
            "cpu_ms": None if self._cpu0 is None else round(1e3 * ((self._cpu1 or time.thread_time()) - self._cpu0), 3),
            "gpu_ms": self._gpu_span_ms(),
            "gc_passes": len(gcs),
            "gc_passes_by_gen": by_gen,
            "gc_ms_total": round(sum((ms for _, ms in gcs), 0.0), 3),
            "gc_ms_max": round(max((ms for _, ms in gcs), default=0.0), 3),
            "gc_max_gen": max(gcs, key=lambda e: e[1])[0] if gcs else None,
            "gc_ms_by_gen": [round(x, 3) for x in ms_gen],
            "jit": self.jit_status,
            "jit_compiles": [e["name"] for e in self.jit_events],
            "jit_compile_ms": [e["ms"] for e in self.jit_events],
            "jit_disk_cache_hits": self.jit_disk_hits,
            "kernel_loads": [e["name"] for e in self.kernel_loads],
        }
        c0, c1 = self._cuda0, self._cuda1 if self._cuda1 is not None else self._cuda_stats()
        for k in (*_CUDA_KEYS, "cuda_host_allocs"):
            out[k] = (c1[k] - c0[k]) if (c0 is not None and c1 is not None and k in c0 and k in c1) else None
        r0, r1 = self._ru0, self._ru1 or _rusage()
        if r0 is not None and r1 is not None:
            out["major_faults"], out["minor_faults"], out["invol_ctx_switches"] = (b - a for a, b in zip(r0, r1))
        else:
            out["major_faults"] = out["minor_faults"] = out["invol_ctx_switches"] = None
        return out


def describe(s: dict, slow_gc_ms: float = _GC_SLOW_MS) -> list[str]:
    """The notable events of one summary (empty when none): a GC pass over `slow_gc_ms`, a JIT
    compile, a kernel binary load, a new CUDA segment or an allocation retry."""
    what = []
    if s.get("gc_ms_max", 0.0) > slow_gc_ms:
        n = s["gc_passes"]
        what.append(f"GC gen-{s.get('gc_max_gen')} pass {s['gc_ms_max']:.1f} ms "
                    f"({n} pass{'es' if n > 1 else ''}, {s['gc_ms_total']:.1f} ms in all)")
    if s.get("jit_compiles"):
        names = sorted(set(s["jit_compiles"]))
        ms = sum(x for x in s.get("jit_compile_ms", []) if x)
        what.append(f"{len(s['jit_compiles'])} JIT compile{'s' if len(s['jit_compiles']) > 1 else ''} "
                    f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; {ms:.1f} ms)")
    if s.get("kernel_loads"):
        what.append(f"{len(s['kernel_loads'])} kernel binary load{'s' if len(s['kernel_loads']) > 1 else ''}")
    if s.get("cuda_segments_allocated"):
        what.append(f"{s['cuda_segments_allocated']} new CUDA segment{'s' if s['cuda_segments_allocated'] > 1 else ''}")
    if s.get("cuda_host_allocs"):
        what.append(f"{s['cuda_host_allocs']} pinned host alloc{'s' if s['cuda_host_allocs'] > 1 else ''}")
    if s.get("alloc_retries"):
        what.append(f"{s['alloc_retries']} CUDA alloc retr{'ies' if s['alloc_retries'] > 1 else 'y'}")
    return what
