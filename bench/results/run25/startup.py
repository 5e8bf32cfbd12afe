"""Run 25 (session 21): engine load time and the first requests' time to first token, to weigh
the warm-up at every doubling up to the largest step (p_warm.patch) against the warm-up before
it. One process: load a synthetic model, then one request of each prompt length in order (fresh
random tokens, one sampled token), each timed to its first token. Prints one JSON line."""
import json
import os
import sys
import time

import numpy as np

from forge.runtime.engine import Engine
from forge.sampling import SamplingParams
from forge.testing.synthetic import write_synthetic

shape, quant, label = sys.argv[1], sys.argv[2], sys.argv[3]
lengths = [int(x) for x in sys.argv[4].split(",")]
path = f"/tmp/forge-synthetic-{shape}-{quant}.gguf"
if not os.path.exists(path):
    write_synthetic(path, shape, quant, seed=0)
t0 = time.perf_counter()
eng = Engine(path, device="gpu", max_model_len=16384)
load = time.perf_counter() - t0
rng = np.random.default_rng(int(time.time()))
vocab = eng.cfg.vocab_size
firsts = []
for n in lengths:
    ids = rng.integers(100, vocab - 100, n).tolist()
    t = time.perf_counter()
    eng.add_request(ids, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    done = False
    while not done:
        done = any(o.finished for o in eng.step())
    firsts.append(round(time.perf_counter() - t, 4))
pg = eng.prefill_graphs
print(json.dumps({"label": label, "shape": shape, "quant": quant, "load_s": round(load, 2),
                  "lengths": lengths, "first_token_s": firsts,
                  "prefill_graphs": sorted(pg.by_size) if pg else None}))
