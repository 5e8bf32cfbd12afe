#!/bin/bash
# Session 23 (run 27), H100 call 5: where a warm start's compile-ahead time goes (compile_ahead's
# waited_s: after the dry pass), with 16 and 4 threads against none, alternately, Gemma 3
# 1B-shaped Q4_K_M, after one cold start that fills the cache.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)" 2>&1 | F | grep -v "%|"
C=bench/results/run27/census.py
S() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['label'], d['load_s'], d['compile_ahead'])"; }
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-w timeout 150 python3 $C gemma3-1b Q4_K_M fill_cold 2>&1 | F | tail -1 | S | tee $OUT/warm2.log
for i in 1 2; do
  for t in 16 4 0; do
    FORGE_COMPILE_THREADS=$t TRITON_CACHE_DIR=/tmp/tc-w timeout 100 python3 $C gemma3-1b Q4_K_M t${t}_warm$i 2>&1 | F | tail -1 | S | tee -a $OUT/warm2.log
  done
done
