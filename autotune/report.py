"""Compile every kernel x shipped config for a GPU target on this machine (no GPU needed) and
report what the ISA says: registers, LDS/shared memory, scratch/spills, occupancy, and whether
matrix instructions (MFMA / WMMA / WGMMA) were used.

    python -m autotune.report --target gfx942            # table per kernel and config
    python -m autotune.report --target all --kernel linear_gemm
    python -m autotune.report --target sm90 --json out.json

Cases come from each forge/kernels/*.py module's COMPILE_SPECS (see /work/kernel_preamble.md):
each spec is compiled with its own config ("spec") and with every entry that the tuning tables
(forge/kernels/configs) could return for its kernel on that arch, laid over the spec. The same
code backs tests/kernels/test_amd_compile.py.

Occupancy (waves per SIMD) from register use:
  gfx942 (CDNA3): 512 VGPRs per SIMD lane, unified VGPR+AGPR, granule 8, at most 8 waves;
                  LDS 64 KiB per CU shared by 4 SIMDs.
  gfx1100 (RDNA3, wave32): 1536 VGPRs per SIMD lane, granule 24, at most 16 waves;
                  LDS 128 KiB per WGP (WGP mode) shared by 4 SIMDs.
  sm90 (Hopper): 64K registers per SM allocated per warp in 256-register units, at most 64 warps
                  and 32 blocks per SM, 228 KiB shared memory per SM with 1 KiB reserved per block.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "gfx942": ("hip", "gfx942", 64),
    "gfx1100": ("hip", "gfx1100", 32),
    "sm90": ("cuda", 90, 32),
}
# Kernels whose inner loop is a tl.dot: they must use the matrix cores.
MATRIX_KERNELS = ("linear_gemm", "attn_prefill")
AMD_OPTION_KEYS = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
SHARED_LIMIT = {"gfx942": 64 * 1024, "gfx1100": 64 * 1024, "sm90": 227 * 1024}
SKIP_MODULES = {"tuning", "__init__"}
VENDOR = {"hip": "amd", "cuda": "nvidia"}


@dataclass
class Case:
    id: str
    module: str           # forge.kernels.<op>
    spec_index: int
    spec_name: str
    kernel: str           # tuning-table kernel name
    target: str           # key of TARGETS
    constexprs: dict
    options: dict
    labels: list = field(default_factory=list)  # config labels that collapse to this case
    expect_mma: bool = False
    # False for a spec's own config on a target whose tables override it for every bucket:
    # it never launches there, so it is not compiled unless asked for (--spec-configs).
    reachable: bool = True


# ----------------------------------------------------------------------------------------------
# cases


def kernel_modules() -> list[str]:
    import forge.kernels as pkg

    return sorted(f"forge.kernels.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.ispkg and m.name not in SKIP_MODULES and not m.name.startswith("_"))


def load_specs(modules: list[str] | None = None) -> list[tuple[str, int, dict]]:
    """(module, index, spec) for every COMPILE_SPECS entry. Import errors propagate."""
    out = []
    for mod in modules if modules is not None else kernel_modules():
        m = importlib.import_module(mod)
        specs = getattr(m, "COMPILE_SPECS", None)
        if specs is None:
            continue
        for i, s in enumerate(specs):
            missing = {"name", "fn", "signature", "constexprs", "num_warps", "num_stages"} - set(s)
            if missing:
                raise ValueError(f"{mod}.COMPILE_SPECS[{i}]: missing keys {sorted(missing)}")
            out.append((mod, i, s))
    return out


# The tuning-table kernel names (see forge/kernels/configs/README.md).
KNOWN_KERNELS = ("linear_gemv", "linear_gemm", "linear_kq", "attn_prefill", "attn_decode",
                 "attn_reduce", "rms_norm", "rope", "act_mul", "embed", "sample", "dequant")


def spec_kernel(spec: dict) -> str:
    """The tuning-table name of a spec: its "kernel" key, else the longest known kernel name
    that its name starts with, once stripped of "_", "_kernel" and a "[...]" suffix
    ("attn_prefill_d128_fp16" and "_linear_gemv_kernel[Q4_K,bf16,T1]" -> "attn_prefill",
    "linear_gemv"), else that stripped name."""
    if spec.get("kernel"):
        return spec["kernel"]
    name = spec["name"].split("[", 1)[0].strip("_")
    if name.endswith("_kernel"):
        name = name[: -len("_kernel")]
    hits = [k for k in KNOWN_KERNELS if name == k or name.startswith(k + "_")]
    return max(hits, key=len) if hits else name


def spec_type(spec: dict) -> str | None:
    """The GGML type a spec is for ("Q4_K" in "_linear_gemv_kernel[Q4_K,bf16,T1]"), if any:
    type-specific table entries ("linear_gemv.Q4_K") apply to these specs only."""
    if spec.get("ggml_type"):
        return spec["ggml_type"]
    m = re.search(r"\[([A-Za-z0-9_]+)", spec["name"])
    return m.group(1) if m else None


def _derive_prefill(ce: dict) -> None:
    from forge.kernels.attention import _derive_prefill as derive

    derive(ce)


# Constexprs that a launcher derives from its config keys, for specs without their own
# "derive" callable (spec["derive"](constexprs) -> None, updating in place). Mirrors the
# launchers: attention.py computes HT/NHC/BQ from BLOCK_M and HT.
DERIVE = {"attn_prefill": _derive_prefill}


def _apply(spec: dict, entry: dict, target: str) -> tuple[dict, dict]:
    constexprs = dict(spec["constexprs"])
    changed = False
    for k, v in entry.items():
        if k in constexprs:
            changed |= constexprs[k] != v
            constexprs[k] = v
    derive = spec.get("derive") or DERIVE.get(spec_kernel(spec))
    if changed and derive is not None:
        try:
            derive(constexprs)
        except KeyError:
            pass
    hip = TARGETS[target][0] == "hip"
    # spec["options"]: extra Triton options of the launch (AMD-only ones apply on AMD only)
    opts = {k: v for k, v in spec.get("options", {}).items() if hip or k not in AMD_OPTION_KEYS}
    opts["num_warps"] = entry.get("num_warps", spec["num_warps"])
    opts["num_stages"] = entry.get("num_stages", spec["num_stages"])
    if hip:
        for k in AMD_OPTION_KEYS:
            if k in entry:
                opts[k] = entry[k]
    return constexprs, opts


def _b(**dims) -> str:
    from forge.kernels.tuning import bucket

    return bucket(**dims)


# How a spec's representative shape maps to the bucket its launcher asks for, for specs that do
# not say so themselves with a "bucket" key. Must mirror the launchers; when a lambda fails
# (KeyError) or returns None, every table entry of the kernel is compiled against that spec.
# (attn_prefill's specs carry their bucket: its `t`, the call's query tokens, is no constexpr.)
SPEC_BUCKET = {
    "attn_decode": lambda ce: _b(d=ce["Dk"], g=ce["G"]),
    "attn_reduce": lambda ce: _b(d=ce["Dv"], s=ce["BLOCK_S"]),
    # SINGLE: the row fits BLOCK_D (D <= BLOCK_D); else the launcher only loops for D > BLOCK_D
    "rms_norm": lambda ce: _b(D=ce["BLOCK_D"] if ce["SINGLE"] else 2 * ce["BLOCK_D"]),
}
# matmul.py's specs name their token count ("...,T512,...") and use a 4096 x 4096 weight
_LINEAR_T = re.compile(r"[\[,]T(\d+)[,\]]")


def _linear_bucket(spec: dict) -> str | None:
    m = _LINEAR_T.search(spec["name"])
    return _b(K=4096, N=4096, T=int(m.group(1))) if m else None


def spec_bucket(spec: dict) -> str | None:
    if spec.get("bucket"):
        return spec["bucket"]
    if spec_kernel(spec) in ("linear_gemv", "linear_gemm"):
        return _linear_bucket(spec)
    fn = SPEC_BUCKET.get(spec_kernel(spec))
    if fn is None:
        return None
    try:
        return fn(spec["constexprs"])
    except (KeyError, ValueError, TypeError):
        return None


def spec_runs_on(spec: dict, target: str) -> bool:
    """Whether a spec's config is one that launches on `target`: its "vendors" ("amd",
    "nvidia") and "families" ("cdna", "rdna", "hopper"... prefixes) keys, else a family tag in
    its name ("_linear_gemv_kernel[Q4_K,bf16,T1,cdna]" is CDNA's default only)."""
    from forge.runtime import device

    arch = TARGETS[target][1] if TARGETS[target][0] == "hip" else f"sm{TARGETS[target][1]}"
    vendors = spec.get("vendors")
    if vendors and VENDOR[TARGETS[target][0]] not in vendors:
        return False
    fams = spec.get("families")
    if fams is None:
        tags = re.findall(r"[\[,](cdna|rdna)[\],]", spec["name"])
        fams = tags or None
    if fams:
        fam = device.family_of(arch) or ""
        return any(fam.startswith(f) for f in fams)
    return True


def _expect_mma(spec: dict, kernel: str) -> bool:
    """Matrix kernels must use MFMA/WMMA/WGMMA, unless their first pointer is fp32 (no fp32
    WMMA on RDNA3; fp32 dots compile to FMAs in IEEE mode) or the spec says otherwise."""
    if "expect_mma" in spec:
        return bool(spec["expect_mma"])
    if kernel not in MATRIX_KERNELS:
        return False
    ptrs = [t for t in spec["signature"].values() if isinstance(t, str) and t.startswith("*")]
    return not (ptrs and ptrs[0] == "*fp32")


def _returnable(kernel: str, target: str, include_user: bool) -> list[tuple[str, Any, str, dict]]:
    """(label, table, bucket, entry) for the entries lookup can return for `kernel` on
    `target`: those of the first table in the chain that has the kernel (all launchers of a
    kernel bucket by the same dims, so later tables are unreachable once one has it), and for a
    kernel with exact dims (attention's head dim) those of later tables at head dims no earlier
    table names (lookup falls through to them), until a table with a "*" or an entry that
    leaves the dim out."""
    from forge.kernels import tuning

    ex = tuning.exact_dims(kernel)
    out, named = [], set()
    for level, table in tuning._chain(target, include_user):
        entries = table.kernels.get(kernel)
        if not entries:
            continue
        name = Path(table.path.split("#")[0]).stem + _sect(table.path)
        vals = {key: tuple(tuning.parse_bucket(key).get(k) for k in ex)
                for key in entries if key != "*"}
        out += [(f"{name}:{kernel}:{key}", table, key, e) for key, e in entries.items()
                if key == "*" or vals[key] not in named]
        named |= set(vals.values())
        if not ex or "*" in entries or any(None in v for v in vals.values()):
            break
    return out


def _cover(add, target, kernel, group, entries) -> None:
    """Add each spec of `group` with its own config and with the entry lookup returns for its
    bucket; then every entry no spec reached, against the specs nearest to its bucket."""
    from forge.kernels import tuning

    reached = set()
    for mod, idx, spec, b in group:
        add(target, kernel, mod, idx, spec, "spec", {}, reachable=not entries)
        if b is None:
            for label, _, key, e in entries:
                add(target, kernel, mod, idx, spec, label, e)
                reached.add(label)
            continue
        for label, table, key, e in entries:
            tk = table_kernel(label)
            got = tuning._pick(table.kernels[tk], b, tuning.exact_dims(tk))
            if got is not None and got[0] == key:
                add(target, kernel, mod, idx, spec, label, e)
                reached.add(label)
                break
    known = [g for g in group if g[3] is not None]
    for label, _, key, e in entries:
        if label in reached:
            continue
        if key == "*" or not known:
            near = group
        else:
            want = tuning.parse_bucket(key)
            ex = tuning.exact_dims(table_kernel(label))
            dist = [tuning.match_distance(tuning.parse_bucket(g[3]), want, ex) for g in known]
            if min(dist) == math.inf:
                continue  # no spec of the entry's head dim: none it could be compiled against
            near = [g for g, d in zip(known, dist) if d == min(dist)]
        for mod, idx, spec, _ in near:
            add(target, kernel, mod, idx, spec, label, e)


def _short(label: str, kernel: str) -> str:
    """"gfx942:attn_prefill:d128_g4" -> "gfx942:d128_g4" (the kernel is in the spec name)."""
    parts = label.split(":", 2)
    return label if len(parts) < 3 or parts[1] != kernel else f"{parts[0]}:{parts[2]}"


def table_kernel(label: str) -> str:
    return label.split(":", 2)[1]


def build_cases(targets: list[str], kernels: list[str] | None = None,
                include_user: bool = False, specs=None, spec_configs: bool = False) -> list[Case]:
    """Every distinct (spec, effective config, target), in a stable order.

    Each spec is compiled with its own config, and with the table entry that lookup returns
    for the spec's bucket; a table entry that no spec's bucket reaches is compiled against the
    specs nearest to it (by bucket distance), so every returnable entry is compiled at a shape
    it is meant for. Specs whose bucket is unknown get every entry.
    """
    specs = load_specs() if specs is None else specs
    by_kernel: dict[str, list] = {}
    for mod, idx, spec in specs:
        k = spec_kernel(spec)
        if kernels and k not in kernels and spec["name"] not in kernels:
            continue
        by_kernel.setdefault(k, []).append((mod, idx, spec, spec_bucket(spec)))
    cases: dict[tuple, Case] = {}

    def add(target, kernel, mod, idx, spec, label, entry, reachable=True):
        if not spec_runs_on(spec, target):
            return
        cx, opts = _apply(spec, entry, target)
        key = (mod, idx, target, tuple(sorted(cx.items())), tuple(sorted(opts.items())))
        if key in cases:
            if label not in cases[key].labels:
                cases[key].labels.append(label)
            cases[key].reachable |= reachable
            return
        cid = f"{target}-{spec['name']}-{_short(label, kernel)}"
        cases[key] = Case(cid, mod, idx, spec["name"], kernel, target, cx, opts, [label],
                          _expect_mma(spec, kernel), reachable)

    for target in targets:
        for kernel, group in by_kernel.items():
            _cover(add, target, kernel, group, _returnable(kernel, target, include_user))
            types = sorted({t for _, _, s, _ in group if (t := spec_type(s))})
            for t in types:
                typed = _returnable(f"{kernel}.{t}", target, include_user)
                if typed:
                    _cover(add, target, kernel, [g for g in group if spec_type(g[2]) == t], typed)
    return [c for c in cases.values() if c.reachable or spec_configs]


def _sect(path: str) -> str:
    return "#" + path.split("#", 1)[1] if "#" in path else ""


# ----------------------------------------------------------------------------------------------
# compile and inspect


def _amd_field(asm: str, name: str) -> int | None:
    m = re.search(rf"^\s*\.{re.escape(name)}:\s+(\d+)", asm, re.M)
    return int(m.group(1)) if m else None


def _amd_comment(asm: str, name: str) -> int | None:
    m = re.search(rf";\s*{re.escape(name)}:\s+(\d+)", asm)
    return int(m.group(1)) if m else None


def _round_up(x: int, g: int) -> int:
    return -(-x // g) * g


def amd_waves_per_simd(arch: str, vgprs: int, lds_bytes: int, num_warps: int) -> int:
    """Waves per SIMD a kernel can keep resident, limited by VGPRs and by LDS."""
    if arch.startswith("gfx11"):
        file, granule, cap, lds_pool, simds = 1536, 24, 16, 128 * 1024, 4  # per WGP (wave32)
    else:  # CDNA (gfx90a/gfx942): unified VGPR+AGPR file
        file, granule, cap, lds_pool, simds = 512, 8, 8, 64 * 1024, 4
    waves = min(cap, file // max(_round_up(max(vgprs, 1), granule), granule))
    if lds_bytes > 0:
        groups = lds_pool // lds_bytes
        waves = min(waves, groups * num_warps // simds)
    return waves


def sm90_warps_per_sm(regs: int, smem: int, num_warps: int) -> int:
    per_warp = _round_up(max(regs, 1) * 32, 256)
    blocks = min(32, 64 // num_warps, 65536 // (per_warp * num_warps))
    if smem > 0:
        blocks = min(blocks, (228 * 1024) // (smem + 1024))
    return blocks * num_warps


def inspect_amd(asm: str, shared: int, arch: str, num_warps: int) -> dict:
    vgpr = _amd_field(asm, "vgpr_count")
    agpr = _amd_field(asm, "agpr_count") or 0
    total_v = _amd_comment(asm, "NumVGPRsForWavesPerEU") or (vgpr or 0) + agpr
    static_lds = _amd_field(asm, "group_segment_fixed_size") or 0
    lds = shared + static_lds
    return {
        "vgprs": vgpr, "agprs": agpr, "vgprs_for_occupancy": total_v,
        "sgprs": _amd_field(asm, "sgpr_count"),
        "vgpr_spills": _amd_field(asm, "vgpr_spill_count"),
        "sgpr_spills": _amd_field(asm, "sgpr_spill_count"),
        "scratch": _amd_field(asm, "private_segment_fixed_size"),
        "lds": lds,
        "waves_per_simd": amd_waves_per_simd(arch, total_v, lds, num_warps),
        "llvm_occupancy": _amd_comment(asm, "Occupancy"),
        "mfma": len(re.findall(r"\bv_mfma_", asm)),
        "wmma": len(re.findall(r"\bv_wmma_", asm)),
    }


def _cuobjdump() -> str:
    from triton import knobs

    return knobs.nvidia.cuobjdump.path


def ptxas_spills(ptx: str) -> tuple[int, int]:
    """(spill store bytes, spill load bytes) that ptxas -v reports for the kernel."""
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself used

    arch = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    cc = int(re.match(r"sm_(\d+)", arch.group(1)).group(1)) if arch else 90
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([get_ptxas(cc).path, "-v", f"--gpu-name={arch.group(1) if arch else 'sm_90a'}",
                              str(src), "-o", str(Path(d) / "k.o")], capture_output=True, text=True)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas -v failed: {log[-2000:]}")
    st = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log))
    ld = sum(int(x) for x in re.findall(r"(\d+) bytes spill loads", log))
    return st, ld


def cuobjdump(cubin: bytes, flag: str) -> str:
    """cuobjdump's output for a cubin (flag: "-sass" or "-res-usage")."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_cuobjdump(), flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def inspect_cuda(cubin: bytes, ptx: str, shared: int, num_warps: int,
                 sass: str | None = None) -> dict:
    """Registers, shared memory, spills and matrix instructions of a compiled kernel. sass: the
    cubin's SASS where the caller has it already (else disassembled here)."""
    res = cuobjdump(cubin, "-res-usage")
    if sass is None:
        sass = cuobjdump(cubin, "-sass")

    def field_(name):
        m = re.search(rf"\b{name}:(\d+)", res)
        return int(m.group(1)) if m else None

    regs, static_smem = field_("REG"), field_("SHARED") or 0
    smem = shared + static_smem
    stack, spill_insts = field_("STACK") or 0, len(re.findall(r"\b(?:STL|LDL)\b", sass))
    # Local memory is also used by libdevice's slow paths (sin/cos argument reduction keeps a
    # small array there): only ptxas can tell register spills apart, so ask it when in doubt.
    spill_st = spill_ld = 0
    if stack or spill_insts:
        spill_st, spill_ld = ptxas_spills(ptx)
    return {
        "regs": regs, "stack": stack, "local": field_("LOCAL") or 0,
        "spill_insts": spill_insts, "spill_stores": spill_st, "spill_loads": spill_ld,
        "smem": smem,
        "warps_per_sm": sm90_warps_per_sm(regs or 0, smem, num_warps),
        "wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)),
        "mma": len(re.findall(r"\bmma\.sync", ptx)) + len(re.findall(r"\bwgmma\.mma_async", ptx)),
        "hgmma_sass": len(re.findall(r"\bHGMMA\b", sass)),
        # L2 prefetches that reached the SASS (the GEMV's L2PF: CCTL.E.PF2)
        "l2_prefetch": len(re.findall(r"\bCCTL\.E\.PF2\b", sass)),
    }


def spec_attrs(spec: dict) -> dict:
    """ASTSource attrs: the spec's own, else what the JIT concludes for any torch tensor argument
    (its data pointer is 16-byte aligned: tt.divisibility 16). Without these hints Triton cannot
    vectorise loads, and the compiled code needs several times the registers it has at run time."""
    if spec.get("attrs") is not None:
        return spec["attrs"]
    names = list(spec["fn"].arg_names)
    return {(names.index(a),): [["tt.divisibility", 16]] for a, t in spec["signature"].items()
            if isinstance(t, str) and t.startswith("*") and a in names}


def compile_case(case: Case, spec: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    backend, arch, warp = TARGETS[case.target]
    t0 = time.perf_counter()
    # spec["signature_for"](signature, constexprs): argument types that follow the config
    # (tensor descriptors' boxes)
    sig = spec["signature_for"](spec["signature"], case.constexprs) if "signature_for" in spec \
        else dict(spec["signature"])
    src = triton.compiler.ASTSource(fn=spec["fn"], signature=sig,
                                    constexprs=dict(case.constexprs), attrs=spec_attrs(spec))
    k = triton.compile(src, target=GPUTarget(backend, arch, warp), options=dict(case.options))
    out: dict[str, Any] = {"compile_s": round(time.perf_counter() - t0, 3)}
    shared = int(k.metadata.shared or 0)
    if backend == "hip":
        out.update(inspect_amd(k.asm["amdgcn"], shared, arch, case.options["num_warps"]))
    else:
        out.update(inspect_cuda(k.asm["cubin"], k.asm["ptx"], shared, case.options["num_warps"]))
    return out


def _cpu_seconds() -> float:
    import resource

    ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime


_SPECS: dict = {}


def _compile_one(c: Case) -> dict:
    key = (c.module, c.spec_index)
    if key not in _SPECS:
        _SPECS.update({(m, i): s for m, i, s in load_specs([c.module])})
    cpu0 = _cpu_seconds()
    try:
        r = compile_case(c, _SPECS[key])
        r["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported per case
        r = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-4000:]}"}
    r["cpu_s"] = round(_cpu_seconds() - cpu0, 3)
    r.update({"kernel": c.kernel, "spec": c.spec_name, "target": c.target, "labels": c.labels,
              "constexprs": c.constexprs, "options": c.options, "expect_mma": c.expect_mma})
    return r


def _worker(case_dict: dict) -> dict:
    return _compile_one(Case(**case_dict))


def run_cases(cases: list[Case], progress: bool = False, jobs: int = 1) -> dict[str, dict]:
    """Compile each case; errors are recorded per case, not raised. jobs > 1 compiles in that
    many spawned processes (each imports the kernels once)."""
    jobs = max(1, min(jobs, len(cases)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc="compile", unit="kernel", file=sys.stderr)
    results: dict[str, dict] = {}
    if jobs == 1:
        for c in cases:
            results[c.id] = _compile_one(c)
            if bar is not None:
                bar.update(1)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_worker, dataclasses.asdict(c)): c.id for c in cases}
            for f in cf.as_completed(futs):
                results[futs[f]] = f.result()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return {c.id: results[c.id] for c in cases}


def _interpreted(specs) -> bool:
    return any(type(s["fn"]).__name__ == "InterpretedFunction" for _, _, s in specs)


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def run_in_subprocess(targets: list[str], only: list[str] | None = None,
                      include_user: bool = False, timeout: float = 3000,
                      jobs: int | None = None) -> tuple[dict, float]:
    """Run the compiles in a fresh interpreter without TRITON_INTERPRET (kernels imported under
    the interpreter cannot be compiled). Returns (results by case id, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, minus its warning
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "report.json"
        cmd = [sys.executable, "-m", "autotune.report", "--target", ",".join(targets),
               "--json", str(out), "--quiet", "--jobs", str(jobs or default_jobs())]
        if include_user:
            cmd.append("--include-user")
        if only is not None:
            lst = Path(d) / "only.txt"
            lst.write_text("\n".join(only))
            cmd += ["--only", str(lst)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"autotune.report failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())["cases"], wall


# ----------------------------------------------------------------------------------------------
# printing


def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    return f"{n / 1024:.1f}K" if n >= 1024 else str(n)


def format_table(results: dict[str, dict], target: str) -> str:
    rows = [(cid, r) for cid, r in results.items() if r["target"] == target]
    amd = TARGETS[target][0] == "hip"
    if amd:
        head = ["kernel", "spec", "config", "warps", "stg", "VGPR", "AGPR", "SGPR", "LDS", "scratch",
                "VGPR spill", "SGPR spill", "waves/SIMD", "llvm occ",
                "mfma" if target == "gfx942" else "wmma", "s"]
    else:
        head = ["kernel", "spec", "config", "warps", "stg", "regs", "smem", "stack", "STL/LDL",
                "spill st/ld", "warps/SM", "wgmma", "mma", "s"]
    lines = []
    for cid, r in sorted(rows, key=lambda x: (x[1]["kernel"], x[1]["spec"], x[0])):
        base = [r["kernel"], r["spec"], "+".join(r["labels"])[:40], r["options"]["num_warps"],
                r["options"]["num_stages"]]
        if not r.get("ok"):
            lines.append(base + ["FAILED: " + r["error"].splitlines()[0][:80]])
            continue
        if amd:
            lines.append(base + [r["vgprs"], r["agprs"], r["sgprs"], _fmt_bytes(r["lds"]), r["scratch"],
                                 r["vgpr_spills"], r["sgpr_spills"], r["waves_per_simd"],
                                 r["llvm_occupancy"], r["mfma"] if target == "gfx942" else r["wmma"],
                                 r["compile_s"]])
        else:
            lines.append(base + [r["regs"], _fmt_bytes(r["smem"]), r["stack"], r["spill_insts"],
                                 f"{r['spill_stores']}/{r['spill_loads']}",
                                 r["warps_per_sm"], r["wgmma"], r["mma"], r["compile_s"]])
    cells = [list(map(str, head))] + [[str(x) for x in ln] for ln in lines]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(head))]
    out = []
    for j, row in enumerate(cells):
        if len(row) < len(head):  # a failure row
            out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:-1])) + "  " + row[-1])
        else:
            out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autotune.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="all",
                    help=f"comma-separated of {', '.join(TARGETS)}, or 'all' (default)")
    ap.add_argument("--kernel", action="append", help="only this tuning kernel (repeatable)")
    ap.add_argument("--json", help="also write all results to this JSON file")
    ap.add_argument("--include-user", action="store_true",
                    help="also compile the entries of your user tuning table")
    ap.add_argument("--spec-configs", action="store_true",
                    help="also compile each spec's own config where the tables override it")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # file of case ids (used by the tests)
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes (default 1)")
    args = ap.parse_args(argv)
    targets = list(TARGETS) if args.target == "all" else args.target.split(",")
    for t in targets:
        if t not in TARGETS:
            ap.error(f"--target: unknown target {t!r} (choose from {', '.join(TARGETS)}, all)")
    specs = load_specs()
    if _interpreted(specs):
        print("TRITON_INTERPRET is set: kernels were imported for the interpreter and cannot be "
              "compiled; unset it and re-run.", file=sys.stderr)
        return 2
    cases = build_cases(targets, args.kernel, args.include_user, specs=specs,
                        spec_configs=args.spec_configs or bool(args.only))
    if args.only:
        keep = set(Path(args.only).read_text().split())
        cases = [c for c in cases if c.id in keep]
    if not cases:
        print("no kernels with COMPILE_SPECS found in forge/kernels/", file=sys.stderr)
    t0 = time.perf_counter()
    results = run_cases(cases, progress=not args.quiet, jobs=args.jobs)
    total = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps({"total_s": total, "cases": results}, indent=1))
    if not args.quiet:
        for t in targets:
            print(f"\n== {t} ==")
            print(format_table(results, t))
        bad = sum(not r["ok"] for r in results.values())
        cpu = sum(r.get("cpu_s", 0) for r in results.values())
        print(f"\n{len(results)} compiles in {total:.1f} s wall ({cpu:.0f} CPU-s), {bad} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
