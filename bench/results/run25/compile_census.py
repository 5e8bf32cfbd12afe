"""Run 25 (session 21): what a first start compiles. Loads a synthetic model on an empty Triton
cache under forge.runtime.hiccups.HiccupRecorder and a jit_cache_hook of its own that keeps each
compile's specialisation key; prints, per kernel, the compiles and their summed ms, and writes
every (kernel, ms, key) to $OUT/census_<label>.json."""
import collections
import json
import os
import sys
import time

import triton

from forge.runtime.hiccups import HiccupRecorder

shape, quant, label = sys.argv[1], sys.argv[2], sys.argv[3]
keys = []


def keep(*args, **kw):
    try:
        _keep(kw)
    except Exception as e:  # noqa: BLE001 - a census must not break a compile
        keys.append(json.dumps({"error": repr(e)}))
    return None


def _keep(kw):
    # the constexprs and the specialisation of the other arguments (type, "D": divisible by
    # 16, 1: equal to 1), by argument name
    c = kw.get("compile") or {}
    fn = kw.get("fn")
    names = list(getattr(getattr(fn, "jit_function", fn), "arg_names", []) or [])

    def name(k):  # (index,) paths -> the argument's name
        if isinstance(k, tuple) and k and isinstance(k[0], int) and k[0] < len(names):
            return names[k[0]] + "".join(f"[{i}]" for i in k[1:])
        return str(k)

    sig = {name(k): str(v) for k, v in (c.get("signature") or {}).items()}
    const = {name(k): str(v) for k, v in (c.get("constants") or {}).items()}
    cfg = c.get("configs") or [{}]
    attrs = {name(k): str(v) for k, v in (cfg[0] or {}).items()}
    keys.append(json.dumps({"key": str(kw.get("key")), "signature": sig, "constants": const, "attrs": attrs,
                            "num_warps": c.get("num_warps"), "num_stages": c.get("num_stages")}))


triton.knobs.runtime.jit_cache_hook = keep
from forge.runtime.engine import Engine  # noqa: E402
from forge.testing.synthetic import write_synthetic  # noqa: E402

path = f"/tmp/forge-synthetic-{shape}-{quant}.gguf"
if not os.path.exists(path):
    write_synthetic(path, shape, quant, seed=0)
t0 = time.perf_counter()
with HiccupRecorder(triton=True) as rec:
    eng = Engine(path, device="gpu", max_model_len=16384)
load = time.perf_counter() - t0
ev = rec.jit_events
rows = [{"name": e["name"], "ms": e["ms"], "key": k} for e, k in zip(ev, keys)]
by = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    by[r["name"]][0] += 1
    by[r["name"]][1] += r["ms"] or 0.0
print(f"{label}: load {load:.1f} s, {len(ev)} compiles ({len(keys)} keys), "
      f"{sum(v[1] for v in by.values()) / 1e3:.1f} s compiling")
for name, (n, ms) in sorted(by.items(), key=lambda kv: -kv[1][1]):
    print(f"{name:40s} {n:4d} {ms / 1e3:8.1f} s")
with open(os.path.join(os.environ.get("OUT", "/tmp"), f"census_{label}.json"), "w") as f:
    json.dump({"load_s": load, "rows": rows}, f)
