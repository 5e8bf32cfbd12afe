#!/bin/bash
# Session 21 (run 25), H100 calls 3 and 4: the warm-up (p_warm.patch): Gemma 3 1B-shaped Q4_K_M (d256
# heads: its tiles change with the token count), max_model_len 16384, the default budget of
# 8192 tokens per step. Per tree: a process on an empty Triton cache, then one on the cache it
# left (a second start); each loads, then times the first token of prompts of 3000, 8000,
# 3000 and 8000 fresh tokens.
# As first run, the patch failed (its path was taken after the cd) and both trees were the new
# one, whose warm-up then captured (s, 1) graphs; prompts replay (rung, 2). Rerun fixed.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
P=$PWD/bench/results/run25/p_warm.patch
rm -rf /tmp/oldw && mkdir /tmp/oldw && cp -r forge /tmp/oldw/
(cd /tmp/oldw && patch -s -R -p1 < $P) || echo "PATCH FAILED"
grep -c "ladder" /tmp/oldw/forge/runtime/engine.py forge/runtime/engine.py
S=$PWD/bench/results/run25/startup.py
run() {  # tree, label, cache
  TRITON_CACHE_DIR=$3 PYTHONPATH=/tmp/site:$1 timeout 200 python3 $S gemma3-1b Q4_K_M $2 \
    3000,8000,3000,8000 2>&1 | grep -v "^nanobind\| - leaked\|Warning\|warn" | tail -2
}
PYTHONPATH=/tmp/site:$PWD python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)"
rm -rf /tmp/tc-old /tmp/tc-new
{ run /tmp/oldw old-cold /tmp/tc-old; run $PWD new-cold /tmp/tc-new
  run /tmp/oldw old-warm /tmp/tc-old; run $PWD new-warm /tmp/tc-new; } 2>&1 | tee $OUT/startup.log
