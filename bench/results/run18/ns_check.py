"""Session 14: does the kernel-wide num_stages change the GEMV's code? For the first 8 sm90
linear_gemv compile cases of one GGML type (argv[1], e.g. 12 = Q4_K; one token row, no fused
prologue or epilogue, compiled with PREFETCH 0), the cp.async count (LDGSTS) with num_stages 1
and 3, and whether the two SASS listings are identical (addresses stripped). CPU only.

    python bench/results/run18/ns_check.py 12
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from autotune import report  # noqa: E402

CASES_PER_TYPE = 8


def sass(spec: dict, constexprs: dict, options: dict) -> str:
    src = triton.compiler.ASTSource(fn=spec["fn"], signature=dict(spec["signature"]),
                                    constexprs=constexprs, attrs=report.spec_attrs(spec))
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        return subprocess.run([report._cuobjdump(), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout


def main(ggml_type: int) -> None:
    specs = {(m, i): s for m, i, s in report.load_specs()}
    done = 0
    for c in report.build_cases(["sm90"], kernels=["linear_gemv"]):
        cx = dict(c.constexprs)
        if cx.get("TYPE") != ggml_type or cx.get("BLOCK_T") != 1 or cx.get("NORM") \
                or cx.get("ACT") or cx.get("RESID"):
            continue
        spec = specs[(c.module, c.spec_index)]
        out = [sass(spec, dict(cx, PREFETCH=0), dict(c.options, num_stages=ns)) for ns in (1, 3)]
        same = [re.sub(r"/\*[0-9a-f]{4,}\*/", "", s) for s in out]
        print(c.spec_name, c.labels[0][:50], ggml_type,
              "ns1 LDGSTS", out[0].count("LDGSTS"), "ns3 LDGSTS", out[1].count("LDGSTS"),
              "same SASS" if same[0] == same[1] else "DIFFERENT")
        done += 1
        if done >= CASES_PER_TYPE:
            break


if __name__ == "__main__":
    main(int(sys.argv[1]))
