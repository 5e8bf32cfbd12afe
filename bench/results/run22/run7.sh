#!/bin/bash
# Session 18 (run 22), H100 call 7: the attention tests natively (GPU-marked ones included:
# the >2**31-element cache takes the 64-bit offsets, the rest the 32-bit ones) with the new sm90
# attn_prefill entries; then bench_attention's prefill table at the three head shapes.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py 2>&1 | tail -4 | tee $OUT/tests.log
for h in 32:8:128 32:8:64 4:1:256; do
  echo "== $h"
  timeout 150 python3 bench/bench_attention.py --only prefill --heads $h 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/prefill_final.log
