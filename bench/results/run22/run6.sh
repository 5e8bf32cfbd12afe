#!/bin/bash
# Session 18 (run 22), H100 call 6: prefill tile sweeps at head dims 256 (Gemma 3 270M heads
# 4:1, 0.44-0.65x SDPA on whole prompts, 0.21-0.25x on 512-token chunks after 4-8k tokens) and
# 64 (Llama-3.2 1B, 0.70-0.93x), shapes 2048@0, 8192@0, 512@8192.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
timeout 280 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 --top 10 \
  --grid "BLOCK_M=64,128 BLOCK_N=32,64 num_warps=8 num_stages=2,3 HT=0,1 QK_CHUNK=0,64" 2>&1 \
  | grep -v "$F" | tee $OUT/sweep_prefill_d256.log | grep -v "failed" | tail -18
timeout 250 python3 bench/bench_attention.py --sweep prefill --heads 32:8:64 --top 10 \
  --grid "BLOCK_M=64,128 BLOCK_N=32,64,128 num_warps=4,8 num_stages=2,3,4" 2>&1 \
  | grep -v "$F" | tee $OUT/sweep_prefill_d64.log | grep -v "failed" | tail -18
