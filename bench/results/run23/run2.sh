#!/bin/bash
# Session 19 (run 23), H100 call 2: sweeps at Gemma 3 heads (4:1, d256) with splits on.
# 1. tiles: BLOCK_M 64/128 x num_stages 2/3 x SINGLE_LOOP 0/1 at BLOCK_N 64, 8 warps;
# 2. the split keys at the shipped d256 tile (64x64, 8 warps, 3 stages).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
timeout 330 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 \
  --cases 2048@0,8192@0,512@4096,512@8192 --top 12 \
  --grid "BLOCK_M=64,128 BLOCK_N=64 num_warps=8 num_stages=2,3 SINGLE_LOOP=0,1" 2>&1 \
  | grep -v "$F" | tee $OUT/sweep_tiles.log
timeout 200 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 \
  --cases 512@1024,512@2048,512@4096,512@8192,2048@0 --top 12 \
  --grid "BLOCK_M=64 BLOCK_N=64 num_warps=8 num_stages=3 KV_SPLITS=1,4,16 KV_SPLIT_MIN=128,256,512,1024" 2>&1 \
  | grep -v "$F" | tee $OUT/sweep_splits.log
