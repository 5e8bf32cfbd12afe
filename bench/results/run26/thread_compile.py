"""Run 26: does Triton compile in parallel from threads of one process? Compiles the same N sm90
cases of the shipped tables (attention, GEMM, GEMV first) on an empty cache, either one after
another or from a thread pool of J threads (argv: mode serial|threads, N, J). Prints the wall
time and the summed per-case compile time. Run each mode in its own process and cache dir."""
import concurrent.futures as cf
import sys
import time

from autotune import report

mode, n, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cases = report.build_cases(["sm90"])
order = ("attn_prefill", "attn_decode", "linear_gemm", "linear_gemv")
cases.sort(key=lambda c: next((i for i, k in enumerate(order) if c.kernel.startswith(k)), 9))
cases = cases[:n]
t0 = time.perf_counter()
if mode == "serial":
    res = [report._compile_one(c) for c in cases]
else:
    with cf.ThreadPoolExecutor(jobs) as ex:
        res = list(ex.map(report._compile_one, cases))
wall = time.perf_counter() - t0
ok = sum(r["ok"] for r in res)
print(f"{mode} x{jobs}: {len(cases)} cases ({ok} ok), wall {wall:.1f} s, "
      f"summed compile {sum(r.get('compile_s', 0) for r in res):.1f} s, "
      f"kernels {sorted({c.kernel for c in cases})}")
