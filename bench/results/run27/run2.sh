#!/bin/bash
# Session 23 (run 27), H100 call 2: GPU tests (precompile, pdl, engine); forge bench on
# Llama-3.2-1B-shaped Q4_K_M from an empty Triton cache (compile ahead on: load line and pp512 /
# tg128 next to run 26's); the census of a Llama-3-8B-shaped Q4_K_M first start, ahead and serial.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py tests/kernels/test_pdl.py tests/runtime/test_engine.py 2>&1 | tail -15 | tee $OUT/tests.log
TRITON_CACHE_DIR=/tmp/tc-1b timeout 200 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 --json $OUT/bench_1b.json 2>&1 | F | grep -v "%|" | tail -12 | tee $OUT/bench_1b.log
C=bench/results/run27/census.py
python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-llama3-8b-Q4_K_M.gguf', 'llama3-8b', 'Q4_K_M', seed=0)" 2>&1 | F | grep -v "%|"
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-8a timeout 200 python3 $C llama3-8b Q4_K_M ahead16_cold 1,200,1000 2>&1 | F | tail -2 | tee $OUT/census8b.log
FORGE_COMPILE_THREADS=0 TRITON_CACHE_DIR=/tmp/tc-8b timeout 200 python3 $C llama3-8b Q4_K_M serial_cold 1,200,1000 2>&1 | F | tail -2 | tee -a $OUT/census8b.log
