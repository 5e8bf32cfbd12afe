#!/bin/bash
# Session 16, H100 call 6: the sweep's --gemv-async axis. Its GPU test, then a real sweep of the
# Q4_K / Q8_0 GEMV at 4096x4096 and 4096x14336 with ASYNC 3 / 4 candidates next to the Triton
# GEMV's (into a scratch table: what does it pick against the shipped entries?).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_tuning.py -k "gpu or async" 2>&1 | tail -3
timeout 330 python3 -m autotune.sweep --kernel linear_gemv --types Q4_K,Q8_0 \
  --shapes 4096x4096,4096x14336 --gemv-async 3,4 --out "$OUT/sweep_async.json" 2>&1 \
  | grep -v "^nanobind\| - leaked\|UserWarning\|warn_once" | tr '\r' '\n' | grep -v "it/s\|run/s\]$\|^\s*$" | tail -20
