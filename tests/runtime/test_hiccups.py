"""HiccupRecorder (forge/runtime/hiccups.py): GC passes, Triton JIT hooks (chained and put back),
and `forge bench`'s per-repetition "hiccups" in its JSON and output. CPU only."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from forge.runtime.hiccups import HiccupRecorder, describe, freeze_gc
from forge.testing.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[2]


def test_forced_collect_is_a_pass_with_duration():
    junk = []
    for _ in range(2000):  # some cyclic garbage, so the pass has work to do
        a = [None]
        a[0] = a
        junk.append({"x": [1, 2, 3]})
    del a
    with HiccupRecorder(triton=False) as rec:
        gc.collect()
    s = rec.summary()
    assert s["gc_passes"] >= 1 and s["gc_passes_by_gen"][2] >= 1
    assert s["gc_ms_total"] > 0 and s["gc_ms_max"] > 0 and s["gc_max_gen"] == 2
    assert s["gc_ms_by_gen"][2] > 0
    assert s["wall_ms"] >= s["gc_ms_total"]
    assert s["jit"] == "off" and s["jit_compiles"] == []
    assert rec._on_gc not in gc.callbacks  # removed on exit
    # outside the region, nothing more is recorded
    gc.collect()
    assert rec.summary()["gc_passes"] == s["gc_passes"]


def test_no_gc_pass_when_none_runs():
    gc.disable()
    try:
        with HiccupRecorder(triton=False) as rec:
            sum(range(1000))
    finally:
        gc.enable()
    s = rec.summary()
    assert s["gc_passes"] == 0 and s["gc_ms_max"] == 0.0 and s["gc_max_gen"] is None
    assert describe(s) == []


def test_describe_names_slow_gc_compiles_and_segments():
    s = {"gc_passes": 2, "gc_passes_by_gen": [1, 0, 1], "gc_ms_total": 91.0, "gc_ms_max": 90.0,
         "gc_max_gen": 2, "jit_compiles": ["_gemm", "_gemm"], "jit_compile_ms": [40.0, None],
         "kernel_loads": [], "cuda_segments_allocated": 1, "alloc_retries": 0}
    what = describe(s)
    assert what[0].startswith("GC gen-2 pass 90.0 ms")
    assert "2 JIT compiles (_gemm; 40.0 ms)" in what
    assert "1 new CUDA segment" in what
    assert describe(dict(s, gc_ms_max=5.0, jit_compiles=[], cuda_segments_allocated=None)) == []


def _hook_kwargs(name: str, key):
    fn = types.SimpleNamespace(name=name, module="m", jit_function=None)
    return dict(key=key, repr=f"{name}[...]", fn=fn, compile={"key": key}, is_manual_warmup=False,
                already_compiled=False)


def test_triton_jit_hooks_chain_and_restore():
    triton = pytest.importorskip("triton")
    knobs = getattr(triton, "knobs", None)
    if knobs is None or not hasattr(knobs.runtime, "jit_cache_hook"):
        pytest.skip("this Triton has no knobs.runtime.jit_cache_hook")
    rt = knobs.runtime
    calls = []

    def prev_cache(**kw):
        calls.append(("cache", kw["fn"].name))
        return False  # False: go on and compile

    def prev_post(**kw):
        calls.append(("post", kw["fn"].name))

    saved = rt.jit_cache_hook, rt.jit_post_compile_hook
    rt.jit_cache_hook, rt.jit_post_compile_hook = prev_cache, prev_post
    listener = getattr(getattr(knobs, "compilation", None), "listener", "absent")
    chains = {n: list(getattr(rt, n).calls) for n in ("kernel_load_start_hook", "kernel_load_end_hook")
              if hasattr(getattr(rt, n, None), "calls")}
    try:
        with HiccupRecorder(triton=True) as rec:
            assert rt.jit_cache_hook is not prev_cache and rt.jit_post_compile_hook is not prev_post
            for n, calls0 in chains.items():
                assert len(getattr(rt, n).calls) == len(calls0) + 1
            key = ("sig", 1)
            # what JITFunction._do_compile calls on an in-memory cache miss, then after compiling
            assert rt.jit_cache_hook(**_hook_kwargs("_rms_norm_kernel", key)) is False
            rt.jit_post_compile_hook(**_hook_kwargs("_rms_norm_kernel", key))
        assert rt.jit_cache_hook is prev_cache and rt.jit_post_compile_hook is prev_post
        assert getattr(getattr(knobs, "compilation", None), "listener", "absent") is listener
        assert {n: list(getattr(rt, n).calls) for n in chains} == chains
        assert calls == [("cache", "_rms_norm_kernel"), ("post", "_rms_norm_kernel")]
        s = rec.summary()
        assert s["jit"].startswith("ok")
        assert s["jit_compiles"] == ["_rms_norm_kernel"]
        assert s["jit_compile_ms"][0] is not None and s["jit_compile_ms"][0] >= 0
        assert "1 JIT compile (_rms_norm_kernel" in describe(s)[0]
        # a hook whose previous hook says "skip the compile" (True) keeps saying so
        rt.jit_cache_hook = lambda **kw: True
        with HiccupRecorder(triton=True):
            assert rt.jit_cache_hook(**_hook_kwargs("k", 2)) is True
    finally:
        rt.jit_cache_hook, rt.jit_post_compile_hook = saved
    # with no previous hook, None is put back
    rt.jit_cache_hook = rt.jit_post_compile_hook = None
    try:
        with HiccupRecorder(triton=True):
            assert rt.jit_cache_hook is not None
        assert rt.jit_cache_hook is None and rt.jit_post_compile_hook is None
    finally:
        rt.jit_cache_hook, rt.jit_post_compile_hook = saved


def test_hook_chained_over_ours_still_works_after_exit():
    triton = pytest.importorskip("triton")
    if not hasattr(getattr(triton, "knobs", None), "runtime"):
        pytest.skip("no triton.knobs")
    rt = triton.knobs.runtime
    saved = rt.jit_cache_hook
    rt.jit_cache_hook = None
    try:
        with HiccupRecorder(triton=True) as rec:
            ours = rt.jit_cache_hook

            def later(**kw):  # someone else installs a hook and chains ours
                return ours(**kw)

            rt.jit_cache_hook = later
        assert rt.jit_cache_hook is later  # not ours to take away
        assert later(**_hook_kwargs("k", 3)) is None  # ours is now a pass-through
        assert rec.summary()["jit_compiles"] == []
    finally:
        rt.jit_cache_hook = saved


def test_triton_without_hooks_is_unavailable(monkeypatch):
    fake = types.ModuleType("triton")
    fake.knobs = types.SimpleNamespace(runtime=types.SimpleNamespace(), compilation=types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "triton", fake)
    with HiccupRecorder() as rec:
        pass
    s = rec.summary()
    assert s["jit"] == "unavailable" and s["jit_compiles"] == []
    fake2 = types.ModuleType("triton")  # no knobs at all (an old Triton)
    monkeypatch.setitem(sys.modules, "triton", fake2)
    with HiccupRecorder() as rec:
        pass
    assert rec.summary()["jit"] == "unavailable"


def test_cuda_counters_none_without_cuda():
    with HiccupRecorder(triton=False) as rec:
        pass
    s = rec.summary()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        assert s["cuda_segments_allocated"] is None and s["alloc_retries"] is None


def test_freeze_gc():
    try:
        n = freeze_gc()
        assert n == gc.get_freeze_count() and n > 0
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------------------------
# forge bench
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("hiccups") / "tiny.gguf"
    write_synthetic(p, "tiny-llama", "Q8_0", seed=5)
    return p


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "forge.cli", "bench", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("freeze", [True, False])
def test_bench_json_has_hiccups(tiny, tmp_path, freeze):
    out = tmp_path / "b.json"
    res = _bench(str(tiny), "-p", "16", "-n", "4", "-r", "2", "--device", "cpu", "--json", str(out),
                 *([] if freeze else ["--no-gc-freeze"]))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "| model | backend | test | t/s |" and "pp16" in lines[2] and "tg4" in lines[3]
    data = json.loads(out.read_text())
    assert len(data["pp_tps"]) == 2
    assert data["gc_freeze"] is freeze and (data["gc_frozen_objects"] > 0) is freeze
    h = data["hiccups"]
    assert set(h) == {"pp", "tg"} and len(h["pp"]) == 2 and len(h["tg"]) == 2
    for s in h["pp"] + h["tg"]:
        for k in ("gc_passes", "gc_ms_total", "gc_ms_max", "jit_compiles", "cuda_segments_allocated",
                  "alloc_retries", "wall_ms"):
            assert k in s, k
        assert s["cuda_segments_allocated"] is None  # CPU backend


def test_bench_prints_which_rep_hiccuped(tiny, monkeypatch, capsys):
    """In-process, with a recorder that reports a compile in the second prefill repetition."""
    import forge.bench as bench
    from forge.cli import build_parser

    made = []

    class Fake(HiccupRecorder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

        def summary(self):
            s = super().summary()
            s["gc_ms_max"] = 0.0  # a real slow GC pass in this process would add to the line
            if len(made) == 3:  # pp, tg, pp <- this one
                s["jit_compiles"], s["jit_compile_ms"] = ["_attn_prefill"], [87.5]
            return s

    monkeypatch.setattr(bench, "HiccupRecorder", Fake)
    a = build_parser().parse_args(["bench", str(tiny), "-p", "8", "-n", "2", "-r", "2", "--device", "cpu",
                                   "--no-gc-freeze"])
    assert bench.run_bench(a) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[4] == "hiccups (no gc freeze): pp rep 2: 1 JIT compile (_attn_prefill; 87.5 ms)"
    assert lines[5] == ""  # then the rest as before
    assert len(made) == 4


def test_llm_gc_freeze_and_unfreeze_on_delete(tiny):
    from forge.llm import LLM

    gc.unfreeze()
    llm = LLM(tiny, device="cpu")  # default: only a GPU backend freezes
    assert gc.get_freeze_count() == 0
    del llm
    llm = LLM(tiny, device="cpu", gc_freeze=True)
    try:
        assert gc.get_freeze_count() > 0
        assert llm.generate([[1, 2, 3]])[0].token_ids  # still works
    finally:
        del llm
    assert gc.get_freeze_count() == 0  # deleting it unfroze, so its cycles can be collected
