#!/bin/bash
# Session 17, H100 call 3: decode attention around call 2's pick (3 stages, fewer and longer
# splits), at the contexts a model's graphs see (capacity 8192) and with both merges; then the
# prefill tile sweep (2048 / 8192 tokens; forge ran at 0.70-0.75x SDPA in call 1).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 300 python3 bench/bench_attention.py --sweep decode --top 30 \
  --cases 1x512x8192,1x1024x8192,1x4096x8192,1x32768x32768,32x512x8192,32x4096x4096 \
  --grid "SPLITS_PER_CU=1,2 MAX_SPLITS=8,16,32 FUSED_REDUCE=0,1 BLOCK_N=64,128 num_stages=3,4 MIN_PARTITION=64,128" \
  2>&1 | grep -v "$F" | tee "$OUT/sweep_decode2.log"
timeout 260 python3 bench/bench_attention.py --sweep prefill --top 12 2>&1 | grep -v "$F" \
  | tee "$OUT/sweep_prefill.log"
