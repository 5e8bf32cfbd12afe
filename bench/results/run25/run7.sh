#!/bin/bash
# Session 21 (run 25), H100 call 7: the GPU tests of the final tree (attention, tuning, the
# engine, and the GPU / CPU parity models, whose GPU engines run the warm-up with graphs).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
timeout 560 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_tuning.py tests/runtime/test_engine.py tests/models/test_gpu_cpu_parity.py 2>&1 | tail -6 | tee $OUT/tests.log
