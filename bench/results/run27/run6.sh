#!/bin/bash
# Session 23 (run 27), H100 call 6: the warm-up mark. GPU tests (precompile, pdl, engine); then
# Gemma 3 1B-shaped Q4_K_M: a cold start (compile ahead, leaves the mark), then warm starts that
# find the mark (no dry pass) alternating with warm starts that compile as they go
# (FORGE_COMPILE_THREADS=0), 3 each.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py tests/kernels/test_pdl.py tests/runtime/test_engine.py 2>&1 | tail -5 | tee $OUT/tests.log
python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)" 2>&1 | F | grep -v "%|"
C=bench/results/run27/census.py
S() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['label'], d['load_s'], d['compile_ahead'], 'outside dry:', d['compiled_outside_dry'], d['first_token_s'])"; }
rm -rf /tmp/tc-m
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-m timeout 150 python3 $C gemma3-1b Q4_K_M cold 1,200,1000 2>&1 | F | tail -1 | S | tee $OUT/mark.log
ls /tmp/tc-m/forge-warm | tee -a $OUT/mark.log
for i in 1 2 3; do
  FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-m timeout 100 python3 $C gemma3-1b Q4_K_M marked_warm$i 1,200,1000 2>&1 | F | tail -1 | S | tee -a $OUT/mark.log
  FORGE_COMPILE_THREADS=0 TRITON_CACHE_DIR=/tmp/tc-m timeout 100 python3 $C gemma3-1b Q4_K_M serial_warm$i 1,200,1000 2>&1 | F | tail -1 | S | tee -a $OUT/mark.log
done
