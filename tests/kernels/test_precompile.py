"""Compiling ahead (forge/kernels/precompile.py).

- CPU: FORGE_COMPILE_THREADS, `capturing()` under `as_if_captured()` (per thread, nested, never
  for a CPU device), matmul picking the capture's dequantize + cuBLAS path inside it.
- GPU: a launch inside `ahead()` compiles and does not run; after it the kernel launches with no
  compile. A fresh process loading synthetic models compiles nothing outside the dry pass (every
  variant the warm-up launches was reached ahead), and greedy output is the same as with compiling
  ahead off.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels import precompile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.delenv("FORGE_COMPILE_THREADS", raising=False)
    n = precompile.workers()
    assert 1 <= n <= 16
    for env, want in (("4", 4), (" 0 ", 0), ("1", 1), ("40", 40)):
        monkeypatch.setenv("FORGE_COMPILE_THREADS", env)
        assert precompile.workers() == want
    for bad in ("four", "2.5", "-1"):
        monkeypatch.setenv("FORGE_COMPILE_THREADS", bad)
        with pytest.raises(ValueError, match="FORGE_COMPILE_THREADS"):
            precompile.workers()


def test_as_if_captured_is_per_thread_and_nests():
    cuda = torch.device("cuda", 0)
    if not torch.cuda.is_available():
        assert not precompile.capturing(cuda) and not precompile.capturing()
    seen = {}

    def other():
        seen["other"] = precompile.capturing(cuda) if torch.cuda.is_available() else \
            bool(getattr(precompile._local, "pretend", 0))

    with precompile.as_if_captured():
        assert precompile.capturing(cuda) and precompile.capturing()
        with precompile.as_if_captured():
            assert precompile.capturing(cuda)
        assert precompile.capturing(cuda)
        assert not precompile.capturing(torch.device("cpu"))    # a CPU tensor never captures
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["other"] is False
    if not torch.cuda.is_available():
        assert not precompile.capturing(cuda)


def test_not_supported_under_the_interpreter(monkeypatch):
    """TRITON_INTERPRET runs kernels as Python: there is no compile-only launch to make."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not precompile.supported()


def test_ahead_refuses_bad_workers():
    if not precompile.supported():
        pytest.skip("this Triton has no async compile")
    with pytest.raises(ValueError, match="num_workers"):
        with precompile.ahead(0):
            pass


def test_matmul_takes_the_capture_path_inside(monkeypatch):
    """Path selection asks precompile.capturing: a quantized linear at T >= DEQUANT_T (with
    DEQUANT_EAGER off) dequantizes + matmuls only while capturing, or inside as_if_captured."""
    from forge.kernels import matmul

    calls = []
    monkeypatch.setattr(matmul, "_dequant_matmul", lambda x, w, out: calls.append(x.shape[0]))
    cfg = {"DEQUANT_T": 8, "DEQUANT_EAGER": 0}
    real = matmul._configs

    def configs(*a, **k):
        gv, gm = real(*a, **k)
        return gv, dict(gm, **cfg, KQ_T=0)

    monkeypatch.setattr(matmul, "_configs", configs)
    monkeypatch.setattr(precompile, "capturing", lambda device=None: bool(
        getattr(precompile._local, "pretend", 0)))
    import numpy as np

    from forge.kernels import dequant
    from forge.testing.synthetic import random_blocks

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    raw = random_blocks("Q8_0", 64 * 2, 0.02, rng).view(np.uint8).reshape(64, -1)
    w = dequant.repack(dequant.TYPE_IDS["Q8_0"], (64, 64), torch.from_numpy(raw.copy()).to(dev))
    x = torch.randn(16, 64, dtype=torch.bfloat16, device=dev)
    matmul.linear(x, w)
    assert calls == []          # eager: the fused GEMM
    with precompile.as_if_captured():
        matmul.linear(x, w)
    assert calls == [16]


def _fake_gpu(monkeypatch, name="NVIDIA H100 80GB HBM3", arch="sm90", cus=132):
    from forge.runtime import device

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    monkeypatch.setattr(device, "detect", lambda: (arch, cus))


def test_marker_names_everything_that_picks_variants(monkeypatch, tmp_path):
    from forge.kernels import tuning

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    for k in ("TRITON_CACHE_MANAGER", "TRITON_REMOTE_CACHE_BACKEND", "FORGE_TEST_KNOB"):
        monkeypatch.delenv(k, raising=False)
    _fake_gpu(monkeypatch)
    a = precompile.marker(("model", 512), 0)
    assert a is not None and a.parent == tmp_path / "forge-warm" and a.suffix == ".json"
    assert precompile.marker(("model", 512), 0) == a
    assert precompile.marker(("model", 1024), 0) != a
    monkeypatch.setenv("FORGE_TEST_KNOB", "1")
    assert precompile.marker(("model", 512), 0) != a
    monkeypatch.delenv("FORGE_TEST_KNOB")
    _fake_gpu(monkeypatch, "NVIDIA H200")
    assert precompile.marker(("model", 512), 0) != a
    _fake_gpu(monkeypatch, arch="sm90a", cus=114)      # same name, another part
    assert precompile.marker(("model", 512), 0) != a
    _fake_gpu(monkeypatch)
    assert precompile.marker(("model", 512), 0) == a
    table = tmp_path / "user.json"
    table.write_text("{}")
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(table))
    b = precompile.marker(("model", 512), 0)
    table.write_text('{"kernels": {}}')
    assert precompile.marker(("model", 512), 0) != b
    monkeypatch.delenv("FORGE_TUNING_TABLE")
    # no marks with in-memory tuning overrides or a cache Triton does not keep in that directory
    monkeypatch.setattr(tuning, "_overrides", [object()])
    assert precompile.marker(("model", 512), 0) is None
    monkeypatch.setattr(tuning, "_overrides", [])
    monkeypatch.setenv("TRITON_CACHE_MANAGER", "my.Manager")
    assert precompile.marker(("model", 512), 0) is None
    monkeypatch.delenv("TRITON_CACHE_MANAGER")
    precompile.leave_mark(a, {"x": 1})
    assert json.loads(a.read_text()) == {"x": 1}
    assert not list(a.parent.glob("*.tmp*"))
    # a directory that cannot be written keeps no mark and raises nothing
    blocked = tmp_path / "file"
    blocked.write_text("")
    precompile.leave_mark(blocked / "sub" / "m.json", {"x": 1})
    precompile.leave_mark(None, {"x": 1})


# ------------------------------------------------------------------------------------------------
# GPU


def _fill_kernel():
    """A fresh JITFunction (its own, empty kernel caches) that fills out[:n] with VAL."""
    import triton
    import triton.language as tl

    @triton.jit
    def fill(out, n, VAL: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out + i, tl.full([BLOCK], VAL, tl.float32), mask=i < n)

    return fill


@pytest.mark.gpu
def test_gpu_ahead_compiles_and_does_not_launch():
    import triton

    if not precompile.supported():
        pytest.skip("this Triton has no async compile")
    fill = _fill_kernel()

    val = float(int.from_bytes(os.urandom(2), "little") + 1)   # a variant not compiled before
    out = torch.zeros(1000, device="cuda")
    misses = []
    old = triton.knobs.runtime.jit_cache_hook

    def hook(*a, **k):
        misses.append(precompile.dry())
        return None

    triton.knobs.runtime.jit_cache_hook = hook
    try:
        with precompile.ahead(2) as job:
            for _ in range(3):
                fill[(4,)](out, 1000, VAL=val, BLOCK=256)
        torch.cuda.synchronize()
        assert job.submitted == 1 and job.failed == 0 and out.abs().sum().item() == 0
        assert misses and all(misses)          # compiled from the dry launches only
        fill[(4,)](out, 1000, VAL=val, BLOCK=256)
        torch.cuda.synchronize()
    finally:
        triton.knobs.runtime.jit_cache_hook = old
    assert all(misses)                         # the real launch found it compiled
    assert torch.all(out == val)


def _cached(fn) -> list[str]:
    return sorted(type(v).__name__ for c in fn.device_caches.values() for v in c[0].values())


@pytest.mark.gpu
def test_gpu_ahead_cleans_up_after_an_exception_and_a_failed_compile():
    import triton
    import triton.language as tl
    from triton.runtime import _async_compile

    if not precompile.supported():
        pytest.skip("this Triton has no async compile")
    fill = _fill_kernel()

    @triton.jit
    def bad(out, V: tl.constexpr):
        tl.static_assert(V < 0)
        tl.store(out, 1.0)

    base = float(int.from_bytes(os.urandom(2), "little") * 8 + 1)
    out = torch.zeros(64, device="cuda")
    with pytest.raises(KeyError):
        with precompile.ahead(2):
            for v in range(4):
                fill[(1,)](out, 64, VAL=base + v, BLOCK=64)
            raise KeyError("stop")
    assert not precompile.dry() and _async_compile.active_mode.get() is None
    assert "_Pending" not in _cached(fill) and "FutureKernel" not in _cached(fill)
    fill[(1,)](out, 64, VAL=base, BLOCK=64)           # a real launch compiles and runs
    torch.cuda.synchronize()
    assert torch.all(out == base)
    with precompile.ahead(2) as job:
        bad[(1,)](out, V=1)
    assert job.submitted == 1 and job.failed == 1
    assert _cached(bad) == []                        # no placeholder left behind
    for _ in range(2):                               # each launch compiles and raises itself
        with pytest.raises(Exception, match="static_assert|Assert|assert"):
            bad[(1,)](out, V=1)


_LOAD = r"""
import gc, json, os, sys
import triton
from forge.kernels import precompile

outside = []

def hook(*a, **k):
    if not precompile.dry():
        fn = k.get("fn")
        outside.append(str(getattr(getattr(fn, "jit_function", fn), "__name__", fn)))
    return None

triton.knobs.runtime.jit_cache_hook = hook
from forge.runtime.engine import Engine
from forge.sampling import SamplingParams
from forge.testing.synthetic import write_synthetic

res = {}
for shape in sys.argv[1].split(","):
    path = os.path.join(sys.argv[2], shape + ".gguf")
    write_synthetic(path, shape, "Q4_K_M", seed=1)
    got = {}
    for threads in ("8", "0"):
        os.environ["FORGE_COMPILE_THREADS"] = threads
        outside.clear()
        eng = Engine(path, device="gpu", max_model_len=1024, max_num_batched_tokens=1024,
                     max_num_seqs=8)
        load_misses = list(outside)
        ids = list(range(5, 60))
        rid = eng.add_request(ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
        toks = []
        while eng.has_unfinished():
            for o in eng.step():
                if o.request_id == rid:
                    toks = list(o.token_ids)
        got[threads] = {"ahead": eng.compile_ahead, "load_misses": load_misses, "tokens": toks,
                        "kv_tokens": eng.pool.capacity_tokens,
                        "same_pool": eng.prefill_graphs.pool == eng.graphs.pool}
        del eng
        gc.collect()
    res[shape] = got
print("RESULT " + json.dumps(res))
"""


@pytest.mark.gpu
def test_gpu_engine_load_compiles_everything_ahead(tmp_path):
    """A fresh process (nothing compiled in memory): loading compiles every kernel the warm-up
    launches in the dry pass (no compile outside it), and greedy tokens match a load that
    compiles as it goes (the second load, same process, after the first is dropped)."""
    if not precompile.supported():
        pytest.skip("this Triton has no async compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # no warm-up mark of an earlier run (its key includes FORGE_* variables): a dry pass runs
    env["FORGE_TEST_NONCE"] = os.urandom(8).hex()
    proc = subprocess.run([sys.executable, "-c", _LOAD, "tiny-llama,tiny-gemma3", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    for shape, got in res.items():
        on, off = got["8"], got["0"]
        assert on["ahead"] and on["ahead"]["kernels"] > 0 and on["ahead"]["failed"] == 0, shape
        assert on["load_misses"] == [], (shape, on["load_misses"])
        assert off["ahead"] is None
        # prefill graphs share the decode graphs' memory pool
        assert on["same_pool"] and off["same_pool"], shape
        assert on["tokens"] and on["tokens"] == off["tokens"], shape
        # the second engine of the process reuses the memory the first one's allocator still
        # holds (TritonBackend.kv_cache_budget_bytes): its KV cache is as large
        assert off["kv_tokens"] >= 0.95 * on["kv_tokens"], (shape, on["kv_tokens"], off["kv_tokens"])
