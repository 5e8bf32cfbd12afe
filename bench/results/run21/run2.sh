#!/bin/bash
# Session 17, H100 call 2: decode attention's split scheme and tiles at batch 1 (ctx 4096 ran at
# 0.66x SDPA in call 1), with batch 32 at ctx 4096 as the guard: one grid through the launcher.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 540 python3 bench/bench_attention.py --sweep decode --top 25 \
  --cases 1x512x32768,1x4096x4096,1x32768x32768,32x4096x4096 \
  --grid "SPLITS_PER_CU=1,2,4 MAX_SPLITS=16,32,64 FUSED_REDUCE=0,1 BLOCK_N=64,128 num_warps=4,8 num_stages=2,3" \
  2>&1 | grep -v "$F" | tee "$OUT/sweep_decode.log"
