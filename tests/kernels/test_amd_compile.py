"""ISA proof on the CPU: every kernel's COMPILE_SPECS x every launch config the shipped tables can
return for it, compiled with Triton for AMD CDNA3 (gfx942, wave64), AMD RDNA3 (gfx1100, wave32)
and NVIDIA Hopper (sm90). No GPU is needed: Triton's wheel bundles the AMD backend (LLVM AMDGPU,
in-process lld) and NVIDIA's ptxas/cuobjdump.

Checked from the compiled artifacts (autotune/report.py reads them):
- AMD: no scratch (`.private_segment_fixed_size: 0`), no VGPR spills (SGPR spills land in VGPR
  lanes, not memory, and are only reported), LDS <= 64 KiB,
  `v_mfma_*` (gfx942) / `v_wmma_*` (gfx1100) in the matrix kernels (linear_gemm, attn_prefill);
- sm90: no register spills (ptxas -v "bytes spill stores/loads", asked whenever cuobjdump shows
  a stack frame or SASS has STL/LDL: libdevice's sin/cos slow path keeps a small local array,
  which is not a spill), shared memory <= 227 KiB,
  `wgmma.mma_async` in the GEMM's PTX (tiles of 64+ rows; smaller ones use mma.sync), MMA
  instructions in prefill attention.

Each spec is compiled with every entry the tables return for it on that target; a spec's own
config is compiled only where no table overrides it (it never launches elsewhere). The compiles
run in one subprocess without TRITON_INTERPRET (kernels imported for the
interpreter cannot be compiled), spread over the CPU cores, and only for the selected tests.
Triton's cache (~/.triton/cache, or $TRITON_CACHE_DIR) makes re-runs fast; the total wall time is
printed at the end of the session. Set FORGE_COMPILE_REPORT=path.json to keep the numbers.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from autotune import report
from forge.kernels import tuning

TARGETS = list(report.TARGETS)
KERNEL_DIR = Path(tuning.__file__).resolve().parent


def _discover():
    """(cases, import errors by module) for whatever kernel modules exist right now."""
    specs, errors = [], {}
    for mod in report.kernel_modules():
        try:
            specs += report.load_specs([mod])
        except Exception as e:  # noqa: BLE001 - a broken module is a failing test, not a crash
            errors[mod] = f"{type(e).__name__}: {e}"
    cases = report.build_cases(TARGETS, specs=specs)
    return specs, cases, errors


SPECS, CASES, IMPORT_ERRORS = _discover()
BY_ID = {c.id: c for c in CASES}
SPEC_BY_KEY = {(m, i): s for m, i, s in SPECS}


@pytest.fixture(scope="module")
def compiled(request):
    """Compile the selected cases (all of them in a full run) once, in a subprocess."""
    wanted = [item.callspec.params["case_id"] for item in request.session.items
              if getattr(item, "callspec", None) is not None and "case_id" in item.callspec.params
              and item.module is request.module]
    if not wanted:
        return {}
    results, wall = report.run_in_subprocess(TARGETS, only=wanted)
    cpu = sum(r.get("cpu_s", 0) for r in results.values())
    msg = (f"test_amd_compile: {len(results)} compiles ({', '.join(TARGETS)}) in {wall:.1f} s wall, "
           f"{cpu:.0f} CPU-s, {report.default_jobs()} processes")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        request.addfinalizer(lambda: tr.write_line(msg))
    out = os.environ.get("FORGE_COMPILE_REPORT")
    if out:
        Path(out).write_text(json.dumps({"wall_s": wall, "cases": results}, indent=1))
    return results


def test_kernel_modules_import():
    assert not IMPORT_ERRORS, f"kernel modules failed to import: {IMPORT_ERRORS}"


def test_there_is_something_to_compile():
    if not SPECS:
        pytest.skip("no forge/kernels module exposes COMPILE_SPECS yet")
    assert CASES


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_compile(compiled, case_id):
    case = BY_ID[case_id]
    r = compiled[case_id]
    where = f"{case.spec_name} x {'+'.join(case.labels)} x {case.target} ({case.options})"
    if SPEC_BY_KEY[(case.module, case.spec_index)].get("attrs") is None:
        where += (" [the spec has no 'attrs': compiled with pointer alignment only, without the "
                  "integer divisibility hints the JIT adds at run time]")
    assert r["ok"], f"{where}: compile failed: {r.get('error')}"
    limit = report.SHARED_LIMIT[case.target]
    if report.TARGETS[case.target][0] == "hip":
        assert r["scratch"] == 0, f"{where}: {r['scratch']} bytes of scratch per lane (spills to memory)"
        assert (r["vgpr_spills"] or 0) == 0, f"{where}: {r['vgpr_spills']} VGPRs spilled"
        # SGPR spills go to VGPR lanes (v_writelane), not memory: reported, not failed.
        assert r["lds"] <= limit, f"{where}: LDS {r['lds']} B > {limit} B"
        if case.expect_mma:
            instr = "mfma" if case.target == "gfx942" else "wmma"
            assert r[instr] > 0, f"{where}: no v_{instr} instructions in a matrix kernel"
    else:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, \
            f"{where}: ptxas spills {r['spill_stores']} B stored / {r['spill_loads']} B loaded " \
            f"(stack {r['stack']} B, {r['spill_insts']} STL/LDL)"
        assert r["smem"] <= limit, f"{where}: shared memory {r['smem']} B > {limit} B"
        if case.kernel == "linear_gemv":   # the GEMV's L2PF prefetches exist exactly when set
            l2pf = case.constexprs.get("L2PF", 0) and case.constexprs.get("ASM")
            assert (r["l2_prefetch"] > 0) == bool(l2pf), \
                f"{where}: {r['l2_prefetch']} L2 prefetch instructions with L2PF {l2pf}"
        wgmma_tile = case.constexprs.get("BLOCK_M", 0) >= 64 and case.options["num_warps"] % 4 == 0
        if case.expect_mma and case.kernel == "linear_gemm" and wgmma_tile:
            assert r["wgmma"] > 0, f"{where}: no wgmma.mma_async in the GEMM's PTX"
        elif case.expect_mma:  # tiles under 64 rows use mma.sync
            assert r["mma"] > 0, f"{where}: no mma/wgmma in a matrix kernel's PTX"


# ---------------------------------------------------------------------------------------------
# tables vs kernels (no compiling)


def _sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in KERNEL_DIR.glob("*.py") if p.stem not in ("tuning", "__init__")}


def _table_entries():
    for path in sorted((KERNEL_DIR / "configs").glob("*.json")):
        doc = json.loads(path.read_text())
        sections = [doc] + list(doc.get("families", {}).values()) + list(doc.get("vendors", {}).values())
        for sect in sections:
            for kernel, entries in sect.get("kernels", {}).items():
                for b, e in entries.items():
                    yield path.name, kernel, b, e


def test_table_keys_are_used_by_their_launcher():
    """Every key of a shipped entry is a launch option or a word in the module whose launcher
    asks for that kernel (catches typos such as BLOCK_n, and entries for renamed kernels)."""
    srcs = _sources()
    problems = []
    for fname, kernel, b, e in _table_entries():
        base = kernel.split(".", 1)[0]
        users = [m for m, s in srcs.items() if f'"{base}"' in s]
        if not users:
            problems.append(f"{fname}: kernel {kernel!r} is not asked for by any forge/kernels module")
            continue
        for key in e:
            if key in tuning.NOTE_KEYS or key in tuning.LAUNCH_KEYS or key in tuning.AMD_ONLY_KEYS:
                continue
            if not any(re.search(rf"\b{re.escape(key)}\b", srcs[m]) for m in users):
                problems.append(f"{fname}: {kernel}[{b}] key {key!r} is unknown to {users}")
    assert not problems, "\n".join(problems)


def test_generic_linear_entries_leave_type_dependent_keys_alone():
    """BLOCK_S counts sub-blocks of a GGML type and the GEMV's BLOCK_K is lanes x warps x the
    type's thread block, so only type-specific entries ("linear_gemv.Q4_K") may set them."""
    bad = [f"{f}: {k}[{b}]" for f, k, b, e in _table_entries()
           if k in ("linear_gemv", "linear_gemm", "dequant") and ("BLOCK_S" in e or "BLOCK_K" in e)]
    assert not bad, bad
