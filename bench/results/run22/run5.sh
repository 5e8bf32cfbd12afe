#!/bin/bash
# Session 18 (run 22), H100 call 5: bench_attention's prefill table with CUDA-graph timing and
# the chunk cases (512 queries after 4096 / 8192 cached tokens) at the three head shapes, this
# session's kernel; then where pp512 @ d8192 (8B Q4_K_M) spends its time (profile_pp_depth.py).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run22
for h in 32:8:128 32:8:64 4:1:256; do
  echo "== $h"
  timeout 150 python3 bench/bench_attention.py --only prefill --heads $h 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/prefill_chunks.log
timeout 300 python3 $R/profile_pp_depth.py 8192 2>&1 | grep -v "$F\|it/s\]\|B/s\]" | tee $OUT/profile_pp_d8192.log | tail -60
