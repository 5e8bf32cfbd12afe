#!/bin/bash
# Session 23 (run 27), H100 call 1: compile ahead. Gemma 3 1B-shaped Q4_K_M first start on an
# empty Triton cache with 16 compile threads, then with compile ahead off (FORGE_COMPILE_THREADS=0,
# the warm-up compiles as it goes), each on its own cache; then each again on its now warm cache;
# then the GPU tests of precompile.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)"
C=bench/results/run27/census.py
L=1,200,1000,3000
rm -rf /tmp/tc-a /tmp/tc-b
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-a timeout 200 python3 $C gemma3-1b Q4_K_M ahead16_cold $L 2>&1 | F | tail -3 | tee $OUT/census.log
FORGE_COMPILE_THREADS=0 TRITON_CACHE_DIR=/tmp/tc-b timeout 200 python3 $C gemma3-1b Q4_K_M serial_cold $L 2>&1 | F | tail -3 | tee -a $OUT/census.log
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-a timeout 100 python3 $C gemma3-1b Q4_K_M ahead16_warm $L 2>&1 | F | tail -3 | tee -a $OUT/census.log
FORGE_COMPILE_THREADS=0 TRITON_CACHE_DIR=/tmp/tc-b timeout 100 python3 $C gemma3-1b Q4_K_M serial_warm $L 2>&1 | F | tail -3 | tee -a $OUT/census.log
TRITON_CACHE_DIR=/tmp/tc-t timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py 2>&1 | tail -15 | tee $OUT/tests.log
