#!/bin/bash
# Session 20 (run 24), H100 call 1: which prefill tile per query-token count (the new `t` dim of
# the attn_prefill bucket). Gemma 3 heads (4:1:256), whole prompts and chunks after 4096 keys,
# without and with the 512-key window of its local layers; then 8B (32:8:128) and 1B (32:8:64)
# heads at a 512-token chunk / prompt against 2048 / 8192. All through bench_attention --sweep
# (CUDA-graph medians, the real launcher under tuning.override).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
G="BLOCK_M=64,128 BLOCK_N=32,64 num_warps=8 num_stages=2,3 SINGLE_LOOP=0,1 HT=0 QK_CHUNK=0"
for w in 0 512; do
  echo "== gemma window $w"
  timeout 200 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 --window $w --top 16 \
    --cases 512@0,1024@0,2048@0,4096@0,8192@0,512@4096,1024@4096,2048@4096 --grid "$G" 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/gemma.log
L="BLOCK_M=64,128 BLOCK_N=64,128 num_warps=4,8 num_stages=2,3"
for h in 32:8:128 32:8:64; do
  echo "== llama $h"
  timeout 120 python3 bench/bench_attention.py --sweep prefill --heads $h --top 16 \
    --cases 512@0,512@4096,1024@0,2048@0,8192@0 --grid "$L" 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/llama.log
