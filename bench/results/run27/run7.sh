#!/bin/bash
# Session 23 (run 27), H100 call 7: the review's fixes under the GPU tests (precompile, engine,
# pdl); then where a load's time goes (Engine.load_phases), Gemma 3
# 1B-shaped and Llama-3.2-1B-shaped Q4_K_M: an empty cache, then two warm (marked) starts each.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py tests/kernels/test_pdl.py tests/runtime/test_engine.py 2>&1 | tail -15 | tee $OUT/tests.log
C=bench/results/run27/census.py
S() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['label'], d['shape'], d['load_s'], d['phases'], d['compile_ahead'], 'outside dry:', d['compiled_outside_dry'])"; }
for m in gemma3-1b llama3.2-1b; do
  python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-$m-Q4_K_M.gguf', '$m', 'Q4_K_M', seed=0)" 2>&1 | F | grep -v "%|"
  for l in cold warm1 warm2; do
    TRITON_CACHE_DIR=/tmp/tc-p timeout 150 python3 $C $m Q4_K_M $l 2>&1 | F | tail -1 | S | tee -a $OUT/phases.log
  done
done
