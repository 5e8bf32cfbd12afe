#!/bin/bash
# Session 23 (run 27), H100 call 10: the final tree: test_precompile (its GPU tests were
# refactored after call 9), and forge bench on Llama-3.2-1B-shaped Q4_K_M from an empty cache.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
TRITON_CACHE_DIR=/tmp/tc-t timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py 2>&1 | tail -4 | tee $OUT/tests.log
TRITON_CACHE_DIR=/tmp/tc-1b timeout 200 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 --json $OUT/bench_1b.json 2>&1 | F | grep -v "%|" | tail -12 | tee $OUT/bench_1b.log
