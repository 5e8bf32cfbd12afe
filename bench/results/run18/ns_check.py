"""Session 14: the GEMV's sm90 SASS with kernel-wide num_stages 1 and 3 (PREFETCH 0), per compile case of
one GGML type (argv[1], e.g. 12 = Q4_K): LDGSTS count and whether the SASS is identical. Run from the repo root."""
import sys, subprocess, tempfile, re
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from autotune import report
import triton
from triton.backends.compiler import GPUTarget
cases = report.build_cases(["sm90"], kernels=["linear_gemv"])
specs = {(m, i): s for m, i, s in report.load_specs()}
done = 0
for c in cases:
    cx = dict(c.constexprs)
    if cx.get("TYPE") != int(sys.argv[1]) or cx.get("BLOCK_T") != 1 or cx.get("NORM") or cx.get("ACT") or cx.get("RESID"): continue
    spec = specs[(c.module, c.spec_index)]
    if c.spec_name != "linear_gemv" and "resid" in c.spec_name: continue
    res = []
    for ns in (1, 3):
        src = triton.compiler.ASTSource(fn=spec["fn"], signature=dict(spec["signature"]), constexprs=dict(cx, PREFETCH=0), attrs=report.spec_attrs(spec))
        try:
          kk = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(c.options, num_stages=ns))
        except Exception as e:
          print("skip", c.spec_name, str(e)[-80:]); break
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kk.asm["cubin"]); f.flush()
            sass = subprocess.run([report._cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
        body = re.sub(r"/\*[0-9a-f]{4,}\*/", "", sass)
        res.append((len(re.findall(r"LDGSTS", sass)), hash(body)))
    if len(res) < 2: continue
    print(c.spec_name, c.labels[0][:50], cx["TYPE"], "ns1 LDGSTS", res[0][0], "ns3 LDGSTS", res[1][0], "same SASS" if res[0][1] == res[1][1] else "DIFFERENT")
    done += 1
    if done >= 8: break
