#!/bin/bash
# Session 23 (run 27), H100 call 11: after the reread (one real-capture check for matmul, xquant,
# rope): GPU tests of those kernels, precompile, engine and pdl, GPU/CPU parity; forge bench Llama-3.2-1B Q4_K_M.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 330 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_xquant.py tests/kernels/test_rope.py tests/kernels/test_precompile.py tests/runtime/test_engine.py tests/kernels/test_pdl.py 2>&1 | tail -4 | tee $OUT/tests.log
TRITON_CACHE_DIR=/tmp/tc-t timeout 250 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu_cpu_parity.py 2>&1 | tail -3 | tee $OUT/parity.log
TRITON_CACHE_DIR=/tmp/tc-1b timeout 200 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 --json $OUT/bench_1b.json 2>&1 | F | grep -v "%|" | tail -12 | tee $OUT/bench_1b.log
