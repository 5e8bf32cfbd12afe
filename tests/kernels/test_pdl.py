"""Programmatic Dependent Launch (forge/kernels/pdl.py) for the decode-path kernels.

- CPU: when `pdl.enabled()` says yes (env, interpreter, vendor, capability, Triton), that every
  launcher passes **pdl.launch_args() (PDL and launch_pdl together), and that no spec compiled for AMD
  has PDL on.
- CPU, compiled for sm90 in a subprocess (no GPU): with PDL=True each kernel's PTX has
  griddepcontrol.launch_dependents and griddepcontrol.wait, the wait ahead of every global memory
  access; with PDL=False neither instruction.
- GPU (Hopper): a decode-like chain of dependent kernels (advance, embedding gather, rms_norm,
  rope + cache write, split decode attention, act_mul, argmax, mixed with torch matmuls) captured
  in a CUDA graph and replayed for several steps gives bit-identical results with PDL on and off.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels import pdl, precompile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (module, kernel) of every kernel that takes the PDL constexpr
PDL_KERNELS = [
    ("forge.kernels.norm", "_rms_norm_kernel"),
    ("forge.kernels.rope", "_rope_kernel"),
    ("forge.kernels.attention", "_attn_decode_kernel"),
    ("forge.kernels.attention", "_attn_reduce_kernel"),
    ("forge.kernels.activation", "_act_mul_kernel"),
    ("forge.kernels.step", "_advance_kernel"),
    ("forge.kernels.sampling", "_argmax_part_kernel"),
    ("forge.kernels.sampling", "_argmax_merge_kernel"),
    ("forge.kernels.dequant", "_dequant_kernel"),
]


@pytest.fixture
def fresh_pdl(monkeypatch):
    """pdl.enabled() recomputed from a clean slate, and forgotten again afterwards."""
    monkeypatch.delenv("FORGE_PDL", raising=False)
    pdl.reset()
    yield monkeypatch
    pdl.reset()


# ---------------------------------------------------------------------------------------------
# enabled() / launch_kwargs()


def _fake_hopper(mp, major=9, hip=None, cuda=True):
    """Pretend torch sees an NVIDIA GPU of compute capability `major`.0 (or a ROCm one)."""
    mp.delenv("TRITON_INTERPRET", raising=False)
    mp.setattr(torch.cuda, "is_available", lambda: cuda)
    mp.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
    mp.setattr(torch.version, "hip", hip)


def test_enabled_on_supported_hopper(fresh_pdl):
    _fake_hopper(fresh_pdl)
    assert pdl.has_gdc()
    assert pdl.enabled() and pdl.mode() == "all"
    # by default every launch takes it, captured or eager (one compile per kernel)
    for capturing in (True, False):
        fresh_pdl.setattr(precompile, "capturing", lambda device=None: capturing)
        assert pdl.active() and pdl.launch_kwargs() == {"launch_pdl": True}
        assert pdl.launch_args() == {"PDL": True, "launch_pdl": True}
        assert pdl.launch_args(False) == {"PDL": False}          # a table entry turned it off
        with pdl.suspended():
            assert not pdl.active() and pdl.launch_args() == {"PDL": False}
        assert pdl.active()


def test_decode_mode_only_while_capturing(fresh_pdl):
    """FORGE_PDL=decode: the earlier policy, PDL only inside a graph capture."""
    _fake_hopper(fresh_pdl)
    fresh_pdl.setenv("FORGE_PDL", "Decode")
    assert pdl.enabled() and pdl.mode() == "decode"
    fresh_pdl.setattr(precompile, "capturing", lambda device=None: True)
    assert pdl.active() and pdl.launch_args() == {"PDL": True, "launch_pdl": True}
    with pdl.suspended():
        assert not pdl.active()
    fresh_pdl.setattr(precompile, "capturing", lambda device=None: False)
    assert not pdl.active() and pdl.launch_kwargs() == {}
    assert pdl.launch_args() == {"PDL": False}


def test_prefill_graphs_follow_the_mode(fresh_pdl):
    """Prefill graphs capture with PDL unless FORGE_PDL=decode (which suspends it there)."""
    from types import SimpleNamespace

    from forge.runtime import graphs

    class _Eng:  # what PrefillGraphs.__init__ reads, on the CPU
        backend = SimpleNamespace(device="cpu")
        max_model_len, max_num_batched_tokens, block_size, max_num_seqs = 256, 64, 16, 4
        graphs = None
        cfg = SimpleNamespace(vocab_size=8)

    _fake_hopper(fresh_pdl)
    assert graphs.PrefillGraphs(_Eng()).pdl is True
    assert graphs.PrefillGraphs(_Eng(), pdl=False).pdl is False
    fresh_pdl.setenv("FORGE_PDL", "decode")
    pdl.reset()
    assert graphs.PrefillGraphs(_Eng()).pdl is False
    fresh_pdl.setenv("FORGE_PDL", "0")
    pdl.reset()
    assert pdl.mode() == "off"
    assert graphs.PrefillGraphs(_Eng()).pdl is True   # asks for it; active() says no


@pytest.mark.parametrize("why", ["interpreter", "FORGE_PDL=0", "FORGE_PDL=off", "FORGE_PDL=False",
                                 "sm80", "rocm", "no cuda", "no gdc"])
def test_disabled(fresh_pdl, why):
    mp = fresh_pdl
    _fake_hopper(mp, major=8 if why == "sm80" else 9, hip="6.2" if why == "rocm" else None,
                 cuda=why != "no cuda")
    if why == "interpreter":
        mp.setenv("TRITON_INTERPRET", "1")
    if why.startswith("FORGE_PDL="):
        mp.setenv("FORGE_PDL", why.split("=", 1)[1])
    if why == "no gdc":
        mp.setattr(pdl, "_tl_cuda", None)
    assert not pdl.enabled() and pdl.mode() == "off"
    assert pdl.launch_kwargs() == {}


def test_forge_pdl_other_values_keep_it_on(fresh_pdl):
    _fake_hopper(fresh_pdl)
    fresh_pdl.setenv("FORGE_PDL", "1")
    assert pdl.enabled()


def test_enabled_is_cached_until_reset(fresh_pdl):
    _fake_hopper(fresh_pdl)
    assert pdl.enabled()
    fresh_pdl.setenv("FORGE_PDL", "0")
    assert pdl.enabled()          # cached per process
    pdl.reset()
    assert not pdl.enabled()


def test_capability_error_means_off(fresh_pdl):
    _fake_hopper(fresh_pdl)

    def boom(*a):
        raise RuntimeError("no device")

    fresh_pdl.setattr(torch.cuda, "get_device_capability", boom)
    assert not pdl.enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (interpreter) run")
def test_off_under_the_interpreter():
    pdl.reset()
    assert not pdl.enabled()
    assert pdl.launch_kwargs() == {}


# ---------------------------------------------------------------------------------------------
# launchers pass PDL and launch_pdl (kernels replaced by recorders: no kernel runs)


class _Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append((self.name, kw))
        return launch


@pytest.mark.parametrize("on,capturing", [(True, True), (True, False), (False, True)])
def test_launchers_pass_pdl(monkeypatch, on, capturing):
    """Every launcher passes PDL and launch_pdl together: in mode "all" (the default) in a
    graph capture and eagerly alike."""
    from forge.kernels import activation, attention, dequant, norm, rope, sampling, step
    from forge.kernels.embedding import embed
    from forge.runtime.backend import RopeSpec

    calls = []
    for mod, name in PDL_KERNELS:
        m = sys.modules[mod]
        monkeypatch.setattr(m, name, _Recorder(name, calls))
    monkeypatch.delenv("FORGE_PDL", raising=False)
    monkeypatch.setattr(pdl, "_MODE", "all" if on else "off")
    monkeypatch.setattr(precompile, "capturing", lambda device=None: capturing)
    # decode with a separate reduce launch (split, merge not fused)
    orig = attention._decode_default
    monkeypatch.setattr(attention, "_decode_default", lambda *a: dict(orig(*a), FUSED_REDUCE=0))
    attention.clear_config_cache()
    try:
        dev = "cpu"
        norm.rms_norm(torch.ones(3, 64), torch.ones(64), 1e-6)
        activation.act_mul_fused(torch.ones(3, 128))
        H, HKV, D, BS = 4, 2, 16, 16
        q = torch.ones(2, H * D)
        kc = torch.zeros(4, BS, HKV, D)
        rope.rope(q, torch.ones(2, HKV * D), torch.ones(2, HKV * D), torch.zeros(2, dtype=torch.int32),
                  kc, kc.clone(), torch.zeros(2, dtype=torch.int64), RopeSpec(D, 1e4), H, HKV, D)
        attention.attention(q, kc, kc.clone(), torch.arange(3, dtype=torch.int32),
                            torch.tensor([40, 9], dtype=torch.int32),
                            torch.zeros(2, 4, dtype=torch.int32), H, HKV, D ** -0.5,
                            max_query_len=1, max_seq_len=64, partition_size=16)
        i32 = dict(dtype=torch.int32)
        step.advance_inputs(torch.zeros(2, **i32), torch.zeros(2, **i32), torch.zeros(2, **i32),
                            torch.zeros(2, dtype=torch.int64), torch.zeros(2, **i32),
                            torch.zeros(2, dtype=torch.int64))
        sampling.argmax(torch.zeros(2, 5000))
        raw = torch.zeros(8, 64, dtype=torch.float16, device=dev).view(torch.uint8)
        table = dequant.repack(1, (8, 64), raw)
        embed(table, torch.tensor([1, 2]))
        dequant.dequantize(table)
    finally:
        attention.clear_config_cache()
    launched = sorted({n for n, _ in calls})
    assert launched == sorted({n for _, n in PDL_KERNELS})
    for name, kw in calls:
        assert kw.get("PDL") is on, (name, kw)
        if on:
            assert kw.get("launch_pdl") is True, (name, kw)
        else:
            assert "launch_pdl" not in kw, (name, kw)


# ---------------------------------------------------------------------------------------------
# specs


def _specs():
    from autotune import report

    return report.load_specs()


def test_pdl_kernels_take_the_constexpr_and_specs_set_it():
    import importlib

    fns = {}
    for mod, name in PDL_KERNELS:
        fn = getattr(importlib.import_module(mod), name)
        assert "PDL" in fn.arg_names, f"{name} has no PDL parameter"
        fns[id(fn)] = name
    seen = set()
    for mod, i, s in _specs():
        if id(s["fn"]) not in fns:
            continue
        seen.add(fns[id(s["fn"])])
        assert "PDL" in s["constexprs"], f"{mod}.COMPILE_SPECS[{i}] ({s['name']}) lacks PDL"
        assert s["signature"].get("PDL") == "constexpr", s["name"]
    assert seen == {n for _, n in PDL_KERNELS}


def test_amd_targets_never_get_pdl():
    """griddepcontrol does not exist on AMD (the AMDGPU lowering fails): PDL=True specs must be
    NVIDIA-only, and no AMD compile case may carry it (also after table overlays)."""
    from autotune import report

    specs = _specs()
    on = [(m, s) for m, _, s in specs if s["constexprs"].get("PDL")]
    assert on, "expected at least one PDL=True spec (sm90)"
    for m, s in on:
        assert list(s.get("vendors") or ()) == ["nvidia"], \
            f"{m}: {s['name']} has PDL on for {s.get('vendors')}"
    amd = [t for t, v in report.TARGETS.items() if v[0] == "hip"]
    cases = report.build_cases(list(report.TARGETS), specs=specs)
    assert not [c.id for c in cases if c.target in amd and c.constexprs.get("PDL")]
    assert [c.id for c in cases if c.target == "sm90" and c.constexprs.get("PDL")]


# ---------------------------------------------------------------------------------------------
# sm90 PTX (compiled on the CPU, in a subprocess without TRITON_INTERPRET)

_PTX_SCRIPT = r"""
import importlib, json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from autotune import report

kernels = json.loads(sys.argv[1])
backend, arch, warp = report.TARGETS["sm90"]
import dataclasses
from triton.backends.nvidia.compiler import CUDAOptions
PDL_OPTION = {f.name for f in dataclasses.fields(CUDAOptions)} & {"launch_pdl"}
MEM = re.compile(r"\b(?:ld|st|atom|red)\.global\b|\bcp\.async\.(?:cg|ca)\b")
out = {}
for mod, name in kernels:
    m = importlib.import_module(mod)
    fn = getattr(m, name)
    cands = [s for s in m.COMPILE_SPECS if s["fn"] is fn and report.spec_runs_on(s, "sm90")
             and not s["constexprs"].get("PDL")]
    # what launches on NVIDIA first, then the gather variant of dequant, then any
    cands.sort(key=lambda s: (s.get("vendors") != ["nvidia"], not s["constexprs"].get("GATHER", True)))
    spec = cands[0]
    for on in (True, False):
        ce, opts = report._apply(spec, {}, "sm90")
        ce["PDL"] = on
        if on and "launch_pdl" in PDL_OPTION:
            opts["launch_pdl"] = True  # as the launcher's **pdl.launch_args() compiles it
        src = triton.compiler.ASTSource(fn=fn, signature=dict(spec["signature"]), constexprs=ce,
                                        attrs=report.spec_attrs(spec))
        ptx = triton.compile(src, target=GPUTarget(backend, arch, warp), options=opts).asm["ptx"]
        body = ptx[ptx.index(".entry"):]
        mem = MEM.search(body)
        out[f"{name}:{int(on)}"] = {
            "spec": spec["name"],
            "wait": body.count("griddepcontrol.wait"),
            "launch": body.count("griddepcontrol.launch_dependents"),
            "wait_at": body.find("griddepcontrol.wait"),
            "first_mem": mem.start() if mem else -1,
            "first_mem_text": mem.group(0) if mem else "",
        }
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def sm90_ptx():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, json.dumps(PDL_KERNELS)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, f"sm90 compile failed:\n{proc.stderr[-4000:]}"
    return json.loads(line[-1][len("RESULT "):])


@pytest.mark.parametrize("kernel", [n for _, n in PDL_KERNELS])
def test_sm90_ptx_griddepcontrol(sm90_ptx, kernel):
    on, off = sm90_ptx[f"{kernel}:1"], sm90_ptx[f"{kernel}:0"]
    where = f"{kernel} ({on['spec']})"
    assert on["wait"] >= 1 and on["launch"] >= 1, f"{where}: PDL=True PTX lacks griddepcontrol"
    assert off["wait"] == 0 and off["launch"] == 0, f"{where}: PDL=False PTX has griddepcontrol"
    # the wait precedes every global load/store/atomic (it is the first thing the kernel does)
    assert on["first_mem"] >= 0, where
    assert on["wait_at"] < on["first_mem"], \
        f"{where}: {on['first_mem_text']} before griddepcontrol.wait in the PTX"


# ---------------------------------------------------------------------------------------------
# GPU: a dependent chain in a CUDA graph, PDL on vs off


def _hopper_pdl_possible() -> bool:
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability()[0] >= 9 and pdl.has_gdc()


def _set_pdl(mp, on: bool) -> None:
    mp.setenv("FORGE_PDL", "1" if on else "0")
    pdl.reset()
    assert pdl.enabled() is on


class _Chain:
    """A decode-like step for B sequences over a one-layer toy model; state in fixed buffers."""

    def __init__(self, seed: int, B=4, H=8, HKV=2, D=64, V=5000, F=1024, BS=16, ctx=(35, 3, 200, 97)):
        from forge.kernels import dequant
        from forge.runtime.backend import RopeSpec

        g = torch.Generator(device="cpu").manual_seed(seed)
        dev, bf = "cuda", torch.bfloat16

        def randn(*shape, scale=1.0, dtype=bf):
            return (torch.randn(*shape, generator=g) * scale).to(device=dev, dtype=dtype)

        self.B, self.H, self.HKV, self.D, self.V = B, H, HKV, D, V
        hid = H * D
        self.spec = RopeSpec(D, 10000.0, style="neox")
        raw = torch.randn(V, hid, generator=g).to(torch.float16).view(torch.uint8)
        self.table = dequant.repack(1, (V, hid), raw.to(dev))          # F16 embedding table
        self.wn1, self.wn2, self.wn3 = (randn(hid, dtype=torch.float32) for _ in range(3))
        self.w_qkv = randn(hid, (H + 2 * HKV) * D, scale=hid ** -0.5)
        self.w_o = randn(hid, hid, scale=hid ** -0.5)
        self.w_gu = randn(hid, 2 * F, scale=hid ** -0.5)
        self.w_down = randn(F, hid, scale=F ** -0.5)
        self.w_lm = randn(hid, V, scale=hid ** -0.5)
        nblk = [-(-(c + 8) // BS) for c in ctx]
        nb = 1 + sum(nblk)
        self.k_cache = randn(nb, BS, HKV, D)
        self.v_cache = randn(nb, BS, HKV, D)
        self.max_seq_len = 4096
        bt = torch.zeros(B, self.max_seq_len // BS, dtype=torch.int32)
        perm = torch.randperm(nb - 1, generator=g) + 1
        used = 0
        for b in range(B):
            bt[b, :nblk[b]] = perm[used:used + nblk[b]]
            used += nblk[b]
        self.block_tables = bt.to(dev)
        i32 = dict(dtype=torch.int32, device=dev)
        pos = torch.tensor(ctx, **i32)                 # the step's token sits at position ctx
        self.positions = pos.clone()
        self.seq_lens = pos + 1
        self.slot_mapping = (self.block_tables.long().gather(1, (pos // BS).long()[:, None])[:, 0]
                             * BS + (pos % BS).long())
        self.token_ids = torch.randint(0, V, (B,), generator=g).to(**i32)
        self.meta = torch.tensor([B, 0], **i32)        # fresh fill: the first replay computes it
        self.ids = torch.zeros(B, dtype=torch.int64, device=dev)
        self.qsl = torch.arange(B + 1, **i32)
        self.state = ["token_ids", "positions", "seq_lens", "slot_mapping", "meta", "ids",
                      "k_cache", "v_cache"]

    def snapshot(self):
        return {n: getattr(self, n).clone() for n in self.state}

    def restore(self, snap):
        for n in self.state:
            getattr(self, n).copy_(snap[n])

    def step(self):
        from forge.kernels.activation import act_mul_fused
        from forge.kernels.attention import attention
        from forge.kernels.embedding import embed
        from forge.kernels.norm import rms_norm
        from forge.kernels.rope import rope
        from forge.kernels.sampling import argmax
        from forge.kernels.step import advance_inputs

        H, HKV, D = self.H, self.HKV, self.D
        advance_inputs(self.token_ids, self.positions, self.seq_lens, self.slot_mapping, self.meta,
                       self.ids)                                                   # PDL, first
        x = embed(self.table, self.token_ids, dtype=torch.bfloat16)               # PDL <- PDL
        h = rms_norm(x, self.wn1, 1e-6)                                           # PDL <- PDL
        qkv = h @ self.w_qkv                                                      # torch
        q, k, v = qkv[:, :H * D], qkv[:, H * D:(H + HKV) * D], qkv[:, (H + HKV) * D:]
        qr = rope(q, k, v, self.positions, self.k_cache, self.v_cache, self.slot_mapping,
                  self.spec, H, HKV, D)                                           # PDL <- torch
        o = attention(qr, self.k_cache, self.v_cache, self.qsl, self.seq_lens, self.block_tables,
                      H, HKV, D ** -0.5, max_query_len=1, max_seq_len=self.max_seq_len)  # <- PDL
        y, r = rms_norm(o @ self.w_o, self.wn2, 1e-6, residual=x)                 # PDL <- torch
        a = act_mul_fused(y @ self.w_gu, "silu")                                  # PDL <- torch
        z = rms_norm(a @ self.w_down, self.wn3, 1e-6, residual=r)[0]              # PDL <- torch
        z2 = rms_norm(z, self.wn3, 1e-6)                                          # PDL <- PDL
        logits = (z2 @ self.w_lm).float()                                         # torch
        argmax(logits, out=self.ids)                                              # PDL x2
        return {"x": x, "h": h, "qr": qr, "o": o, "y": y, "a": a, "z2": z2, "logits": logits}


def _run(seed: int, graph: bool, steps: int = 4) -> list[dict]:
    c = _Chain(seed)
    snap = c.snapshot()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        c.step()                   # compile and warm up (mutates the state: restored below)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    c.restore(snap)
    outs = []
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            res = c.step()
        c.restore(snap)            # capture runs nothing, but be explicit
        for _ in range(steps):
            g.replay()
            outs.append({**{k: t.clone() for k, t in res.items()},
                         **{n: getattr(c, n).clone() for n in c.state}})
    else:
        for _ in range(steps):
            res = c.step()
            outs.append({**{k: t.clone() for k, t in res.items()},
                         **{n: getattr(c, n).clone() for n in c.state}})
    torch.cuda.synchronize()
    return outs


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [1, 0])
def test_gpu_pdl_chain_bit_identical(monkeypatch, fused):
    if not _hopper_pdl_possible():
        pytest.skip("PDL needs an NVIDIA GPU of compute capability >= 9.0 and Triton's gdc ops")
    from forge.kernels import attention as attn

    orig = attn._decode_default
    monkeypatch.setattr(attn, "_decode_default", lambda *a: dict(orig(*a), FUSED_REDUCE=fused))
    attn.clear_config_cache()
    try:
        results = {}
        for on in (False, True):
            _set_pdl(monkeypatch, on)
            for graph in (False, True):
                results[(on, graph)] = _run(1234, graph)
    finally:
        pdl.reset()
        attn.clear_config_cache()
    for graph in (False, True):
        off, on = results[(False, graph)], results[(True, graph)]
        for s, (a, b) in enumerate(zip(off, on)):
            for name in a:
                assert torch.equal(a[name], b[name]), \
                    f"{'graph' if graph else 'eager'} step {s}: {name} differs with PDL on"
    # the run-ahead state moved on: replay s computes position ctx + s with the sampled token
    outs = results[(True, True)]
    assert torch.equal(outs[-1]["positions"] - outs[0]["positions"],
                       torch.full_like(outs[0]["positions"], len(outs) - 1))
    assert torch.equal(outs[1]["token_ids"].long(), outs[0]["ids"])
    assert all(torch.isfinite(o["logits"]).all() for o in outs)
