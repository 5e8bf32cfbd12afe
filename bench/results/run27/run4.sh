#!/bin/bash
# Session 23 (run 27), H100 call 4: the precompile GPU tests again (after the KV budget fix), then
# warm-cache loads of Gemma 3 1B-shaped Q4_K_M, compile ahead on and off alternately (3 each)
# after one cold start that fills the cache.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py 2>&1 | tail -15 | tee $OUT/tests.log
python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)" 2>&1 | F | grep -v "%|"
C=bench/results/run27/census.py
FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-w timeout 150 python3 $C gemma3-1b Q4_K_M fill_cold 2>&1 | F | tail -1 | tee $OUT/warm.log
for i in 1 2 3; do
  FORGE_COMPILE_THREADS=16 TRITON_CACHE_DIR=/tmp/tc-w timeout 100 python3 $C gemma3-1b Q4_K_M ahead16_warm$i 2>&1 | F | tail -1 | tee -a $OUT/warm.log
  FORGE_COMPILE_THREADS=0 TRITON_CACHE_DIR=/tmp/tc-w timeout 100 python3 $C gemma3-1b Q4_K_M serial_warm$i 2>&1 | F | tail -1 | tee -a $OUT/warm.log
done
