"""Run 27 (session 23): a first start with the kernels compiled ahead (forge/kernels/precompile.py).
Loads a synthetic model (argv: shape quant label; FORGE_COMPILE_THREADS as set) with a
jit_cache_hook that notes each compile and whether it came from the dry pass; then one request
of each prompt length in argv[4] (one sampled token, timed to it). Prints one JSON line: load
seconds, the engine's compile_ahead record, distinct variants compiled in the dry pass, the
compiles outside it (by kernel), and the first-token times."""
import collections
import json
import os
import sys
import time

import numpy as np
import triton

from forge.kernels import precompile

shape, quant, label = sys.argv[1], sys.argv[2], sys.argv[3]
lengths = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else []
dry_keys, outside = set(), []
phase = ["load"]


def hook(*args, **kw):
    fn = kw.get("fn")
    name = str(getattr(getattr(fn, "jit_function", fn), "__name__", fn))
    if precompile.dry():
        dry_keys.add((name, str(kw.get("key"))))
    else:
        outside.append((phase[0], name))
    return None


triton.knobs.runtime.jit_cache_hook = hook
from forge.runtime.engine import Engine  # noqa: E402
from forge.sampling import SamplingParams  # noqa: E402
from forge.testing.synthetic import write_synthetic  # noqa: E402

path = f"/tmp/forge-synthetic-{shape}-{quant}.gguf"
if not os.path.exists(path):
    write_synthetic(path, shape, quant, seed=0)
t0 = time.perf_counter()
eng = Engine(path, device="gpu", max_model_len=16384)
load = time.perf_counter() - t0
phase[0] = "serve"
rng = np.random.default_rng(int(time.time()))
firsts = []
for n in lengths:
    ids = rng.integers(100, eng.cfg.vocab_size - 100, n).tolist()
    t = time.perf_counter()
    eng.add_request(ids, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    done = False
    while not done:
        done = any(o.finished for o in eng.step())
    firsts.append(round(time.perf_counter() - t, 4))
by = collections.Counter(f"{p}:{n}" for p, n in outside)
print(json.dumps({"label": label, "shape": shape, "quant": quant, "load_s": round(load, 2),
                  "threads_env": os.environ.get("FORGE_COMPILE_THREADS"),
                  "compile_ahead": eng.compile_ahead, "phases": eng.load_phases,
                  "dry_variants": len(dry_keys),
                  "compiled_outside_dry": len(outside), "outside_by_kernel": dict(by),
                  "lengths": lengths, "first_token_s": firsts}))
