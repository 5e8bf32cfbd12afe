#!/bin/bash
# Session 23 (run 27), H100 call 9: the final tree's GPU tests (the tokenizer thread of call 8
# reverted; one warm run per decode capture kept): precompile + engine + pdl, then the GPU/CPU
# parity file on its own (call 8's single pytest run of all four hit its 300 s limit).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
TRITON_CACHE_DIR=/tmp/tc-t timeout 280 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_precompile.py tests/runtime/test_engine.py tests/kernels/test_pdl.py 2>&1 | tail -6 | tee $OUT/tests.log
TRITON_CACHE_DIR=/tmp/tc-t timeout 280 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu_cpu_parity.py --durations=5 2>&1 | tail -12 | tee $OUT/parity.log
