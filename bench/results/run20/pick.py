"""Session 16: from the Q8_0 grid timings (bench/gluon_gemv.py --json, one or more files), the
fastest ASYNC config per shape (mean over the files) where it beats the Triton GEMV by more than
2%; writes a user table (argv[1]) whose 8B Q8_0 GEMV buckets are the shipped sm90 entries with
those ASYNC keys (ASYNC 1 .. 8 on, the rest left as shipped) and prints the choice per shape."""
import json
import sys
from collections import defaultdict

sys.path.insert(0, ".")
from forge.kernels import tuning  # noqa: E402

out, files = sys.argv[1], sys.argv[2:]
us = defaultdict(list)
tri = defaultdict(list)
for f in files:
    for r in json.load(open(f))["rows"]:
        key = (r["N"], r["K"])
        if r.get("kind") == "triton":
            tri[key].append(r["us"])
        elif "BN" in r:
            us[key + (r["BN"], r["W"], r["S"], r["XA"])].append(r["us"])
ship = json.load(open("forge/kernels/configs/sm90.json"))["kernels"]["linear_gemv.Q8_0"]
table = {}
for (n, k), ts in sorted(tri.items()):
    t_tri = sum(ts) / len(ts)
    best = min(((sum(v) / len(v), c[2:]) for c, v in us.items() if c[:2] == (n, k)),
               default=None)
    b = tuning.bucket(T=1, N=n, K=k)
    verdict = "keep Triton"
    if best and best[0] < 0.98 * t_tri:
        bn, w, s, xa = best[1]
        table[b] = dict(ship[b], ASYNC=s, ASYNC_BN=bn, ASYNC_WARPS=w, ASYNC_XA=xa)
        verdict = f"ASYNC {s} BN {bn} W {w} XA {xa}"
    print(f"{n}x{k} ({b}): Triton {t_tri:.2f} us, best async "
          f"{best[0]:.2f} us {best[1]} -> {verdict}")
json.dump({"arch": "sm90", "kernels": {"linear_gemv.Q8_0": table}}, open(out, "w"), indent=1)
