"""forge.kernels.gemv_async: the shared-memory (cp.async) Q4_K / Q8_0 GEMV, NVIDIA only.

On the CPU: its config keys are validated, `eligible` admits only the calls the kernel can
take, and every shipped sm90 ASYNC config compiles for sm90 (Gluon needs no GPU to compile) with
cp.async (LDGSTS), no local-memory spills and shared memory within the 227 KiB an sm90 program
may have. On a GPU (@gpu): through `linear`, on fresh random blocks of each type, against the float64
product of the dequantized weight with x as the int8 path quantizes it (at most one bf16 ulp
plus the tie slack, as test_matmul's int8 test), against the Triton GEMV (the same arithmetic
up to the order of float32 sums), with and without the fused residual, over rows per program,
warps, ring slots and both x paths; and calls it cannot take fall back to the Triton GEMV.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_matmul import DEV, make_weight, quantized_x, rel_err, tie_slack  # noqa: E402

from forge.kernels import gemv_async  # noqa: E402
from forge.kernels import matmul as mm  # noqa: E402
from forge.kernels import tuning  # noqa: E402

Q8_0, Q4_K = 8, 12
TYPES = {"Q4_K": Q4_K, "Q8_0": Q8_0}
SM90 = Path(mm.__file__).resolve().parent / "configs" / "sm90.json"


def _async_entries(name: str) -> list[tuple[str, dict]]:
    doc = json.loads(SM90.read_text())
    return [(b, e) for b, e in doc["kernels"].get(f"linear_gemv.{name}", {}).items()
            if e.get("ASYNC")]


def test_config_keys_are_validated():
    base = {"ASYNC": 4, "ASYNC_BN": 2, "ASYNC_WARPS": 1, "ASYNC_XA": 1}
    assert gemv_async.check_config(base) == (4, 2, 1, 1)
    assert gemv_async.check_config({})[0] == 0
    for bad in ({"ASYNC": 1}, {"ASYNC": 9}, {"ASYNC_BN": 3}, {"ASYNC_BN": 16}, {"ASYNC_WARPS": 16},
                {"ASYNC_XA": 2}):
        with pytest.raises(ValueError):
            gemv_async.check_config(dict(base, **bad))
        with pytest.raises(ValueError):
            tuning.parse_table({"arch": "sm90", "kernels": {"linear_gemv": {"*": dict(base, **bad)}}})
    tuning.parse_table({"arch": "sm90", "kernels": {"linear_gemv": {"*": base}}})
    # the launcher default carries the keys (so a table may set them), with the path off
    gv = mm.gemv_default(Q4_K, 1, 4096, 4096)
    assert gv["ASYNC"] == 0 and {"ASYNC_BN", "ASYNC_WARPS", "ASYNC_XA"} <= gv.keys()


def test_eligible_calls():
    gv = {"ASYNC": 4, "ASYNC_BN": 2, "ASYNC_WARPS": 2}
    assert gemv_async.eligible(Q4_K, 1, 4096, 14336, gv, True)
    assert not gemv_async.eligible(Q4_K, 1, 4096, 14336, dict(gv, ASYNC=0), True)   # off
    assert not gemv_async.eligible(13, 1, 4096, 14336, gv, True)                     # Q5_K
    assert not gemv_async.eligible(Q4_K, 2, 4096, 14336, gv, True)                   # 2 rows of x
    assert not gemv_async.eligible(Q4_K, 1, 4096, 14336, gv, False)                  # x not int8
    assert not gemv_async.eligible(Q4_K, 1, 4095, 14336, gv, True)                   # N % BN
    assert not gemv_async.eligible(Q4_K, 1, 4096, 14336 - 1024, gv, True)            # part step
    assert gemv_async.eligible(Q4_K, 1, 4096, 14336 - 1024, dict(gv, ASYNC_WARPS=1), True)
    # Q8_0: chunks of 16 elements, so a step of W warps is 512 W columns
    assert gemv_async.eligible(Q8_0, 1, 4096, 14336, gv, True)
    assert gemv_async.eligible(Q8_0, 1, 4096, 4096, dict(gv, ASYNC_WARPS=8), True)
    assert not gemv_async.eligible(Q8_0, 1, 4096, 14336, dict(gv, ASYNC_WARPS=8), True)
    assert not gemv_async.eligible(Q8_0, 1, 4096, 512 * 3 + 256, dict(gv, ASYNC_WARPS=1), True)
    assert not gemv_async.eligible(2, 1, 4096, 4096, gv, True)                       # Q4_0
    with pytest.raises(ValueError):
        gemv_async.launch(None, None, {}, 4096, 4096, None, gv, ggml_type=2)
    # a ring larger than a program's shared memory falls back (sm90: 227 KiB)
    big = {"ASYNC": 8, "ASYNC_BN": 8, "ASYNC_WARPS": 4, "ASYNC_XA": 1}
    assert gemv_async.smem_bytes(Q4_K, big) == 233472
    assert gemv_async.eligible(Q4_K, 1, 4096, 4096, big, True)
    assert not gemv_async.eligible(Q4_K, 1, 4096, 4096, big, True, smem=227 * 1024)
    assert gemv_async.eligible(Q4_K, 1, 4096, 4096, dict(big, ASYNC=7), True, smem=227 * 1024)


def test_not_supported_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(gemv_async, "_INTERPRET", True)   # (read once, at import)
    assert not gemv_async.supported()
    assert gemv_async.smem_limit() == 0                   # so `eligible` admits nothing


@pytest.mark.parametrize("name", sorted(TYPES))
def test_shipped_sm90_entries_exist_and_validate(name):
    entries = _async_entries(name)
    assert entries, f"sm90.json ships no ASYNC entry for linear_gemv.{name}"
    from autotune.spaces import GEMV_SHAPES

    for bucket, e in entries:
        s, bn, w, xa = gemv_async.check_config(e)
        assert s >= 2 and e.get("X_PRE") == 1, bucket    # the path reads pre-quantized x
        # the entry takes effect on its own bucket's shapes (whole steps, N % BN, the ring
        # within an sm90 program's 227 KiB)
        shapes = [(n, k) for n, k in GEMV_SHAPES if tuning.bucket(T=1, N=n, K=k) == bucket]
        assert shapes, bucket
        for n, k in shapes:
            assert gemv_async.eligible(TYPES[name], 1, n, k, e, True, smem=227 * 1024), (bucket, n, k)


@pytest.mark.skipif(not gemv_async.AVAILABLE, reason="this Triton has no Gluon")
@pytest.mark.parametrize("resid", [False, True])
@pytest.mark.parametrize("name", sorted(TYPES))
def test_shipped_configs_compile_for_sm90(name, resid):
    """Every shipped ASYNC config, compiled for sm90 on the CPU (bench/gluon_gemv.py --check, in
    a process without TRITON_INTERPRET: kernels imported for the interpreter cannot be
    compiled): cp.async, dp4a, no spills, shared memory within an sm90 program's 227 KiB."""
    grid = sorted({gemv_async.check_config(e) for _, e in _async_entries(name)})
    spec = ",".join(f"{bn}:{w}:{s}:{xa}" for s, bn, w, xa in grid)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "bench" / "gluon_gemv.py"), "--check",
                          "--type", name, "--grid", spec] + (["--resid"] if resid else []),
                         capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(grid)
    for r, (s, bn, w, xa) in zip(rows, grid):
        # the ring is the kernel's shared memory, as `smem_bytes` (eligible's limit check) says
        assert r["shared"] == gemv_async.smem_bytes(
            TYPES[name], {"ASYNC": s, "ASYNC_BN": bn, "ASYNC_WARPS": w, "ASYNC_XA": xa}), r
        assert r["LDGSTS"] > 0 and r["IDP"] > 0, r
        assert r["spills"] == 0 and r["STL"] == 0, r
        assert r["shared"] <= 227 * 1024, r


# (type, rows, columns, ASYNC, ASYNC_BN, ASYNC_WARPS, ASYNC_XA): 1 to 8 steps per row (the
# 1-step cases have more ring slots than steps), several programs of BN rows each; a Q8_0 step
# is half as many columns (16 per chunk)
GPU_CASES = [("Q4_K", 6, 2048, 2, 2, 1, 1), ("Q4_K", 12, 3072, 3, 4, 1, 0),
             ("Q4_K", 10, 4096, 4, 2, 2, 1), ("Q4_K", 4, 8192, 6, 1, 4, 0),
             ("Q4_K", 14, 1024, 8, 2, 1, 1), ("Q4_K", 8, 2048, 3, 4, 2, 1),
             ("Q4_K", 16, 8192, 3, 8, 1, 1),
             ("Q8_0", 6, 1024, 2, 2, 1, 1), ("Q8_0", 12, 1536, 3, 4, 1, 0),
             ("Q8_0", 10, 2048, 4, 2, 2, 1), ("Q8_0", 4, 4096, 6, 1, 4, 0),
             ("Q8_0", 14, 512, 8, 2, 1, 1), ("Q8_0", 8, 3072, 4, 4, 2, 0),
             ("Q8_0", 2, 8192, 5, 1, 8, 1), ("Q8_0", 24, 4096, 2, 8, 1, 0)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_float64_and_the_triton_gemv(case, rng, tuning_table):
    name, N, K, s, bn, w, xa = case
    t = TYPES[name]
    V, E = mm.gemv_shape(t)
    # (SPLIT_K 1: the launcher default splits K for so few rows, and split calls keep Triton)
    cfg = {"X_INT8": 1, "X_PRE": 1, "PDL": 1, "SPLIT_K": 1, "ASYNC": s, "ASYNC_BN": bn,
           "ASYNC_WARPS": w, "ASYNC_XA": xa}
    qt, w64 = make_weight(name, N, K, rng)
    assert gemv_async.eligible(t, 1, N, K, dict(cfg), True) and gemv_async.supported()
    x = torch.from_numpy(rng.standard_normal((1, K)).astype(np.float32)).to(torch.bfloat16)
    res = torch.from_numpy(rng.standard_normal((1, N)).astype(np.float32)).to(torch.bfloat16)
    x64 = x.double().numpy()
    ref = quantized_x(x64, V, E) @ w64.T
    slack = tie_slack(x64, V, E, w64, ref)
    calls = []
    real = gemv_async.launch

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)

    tuning_table({f"linear_gemv.{name}": {"*": dict(cfg, ASYNC=0)}})
    y_tri = mm.linear(x.to(DEV), qt)
    tuning_table({f"linear_gemv.{name}": {"*": cfg}})
    gemv_async.launch = spy
    try:
        y = mm.linear(x.to(DEV), qt)
        y_res = mm.linear(x.to(DEV), qt, residual=res.to(DEV))
    finally:
        gemv_async.launch = real
    assert len(calls) == 2, "linear did not take the async path"
    assert rel_err(y, ref) < 1.25 * 2.0 ** -7 + slack
    assert rel_err(y, y_tri.double().cpu().numpy()) < 2.0 ** -7
    res64 = res.double().numpy()
    assert rel_err(y_res, ref + res64) < 1.25 * 2.0 ** -7 + slack


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(TYPES))
def test_ineligible_calls_fall_back(name, rng, tuning_table):
    """A bias, two token rows, N not a multiple of ASYNC_BN or a partial step keep the Triton
    GEMV (and its results)."""
    cfg = {"X_INT8": 1, "X_PRE": 1, "SPLIT_K": 1, "ASYNC": 4, "ASYNC_BN": 2, "ASYNC_WARPS": 1}
    tuning_table({f"linear_gemv.{name}": {"*": cfg}})
    V, E = mm.gemv_shape(TYPES[name])
    step = 32 * gemv_async.CHUNK[TYPES[name]]
    calls = []
    real = gemv_async.launch
    gemv_async.launch = lambda *a, **k: calls.append(a) or real(*a, **k)
    try:
        # the first call is eligible (so the table reached the launcher), the others are not
        for N, K, T, bias in ((6, 2 * step, 1, False), (6, 2 * step, 1, True),
                              (6, 2 * step, 2, False), (7, 2 * step, 1, False),
                              (6, step + 256, 1, False)):
            qt, w64 = make_weight(name, N, K, rng)
            x = torch.from_numpy(rng.standard_normal((T, K)).astype(np.float32)).to(torch.bfloat16)
            b = torch.from_numpy(rng.standard_normal(N).astype(np.float32)) if bias else None
            y = mm.linear(x.to(DEV), qt, None if b is None else b.to(DEV))
            ref = quantized_x(x.double().numpy(), V, E) @ w64.T
            if b is not None:
                ref = ref + b.double().numpy()
            assert rel_err(y, ref) < 2e-2
    finally:
        gemv_async.launch = real
    assert len(calls) == 1
