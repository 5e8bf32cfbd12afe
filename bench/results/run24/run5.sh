#!/bin/bash
# Session 20 (run 24), H100 call 5: the t4096 bucket serves 2049 tokens and up (buckets round
# up): Gemma 3 heads at 2560 / 3072 tokens, whole and after 4096 keys, 64x64 vs the shipped
# 128x32, both windows; then the GPU tests of attention and tuning.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
G="BLOCK_M=64,128 BLOCK_N=32,64 num_warps=8 num_stages=3 SINGLE_LOOP=0 HT=0 QK_CHUNK=0"
for w in 0 512; do
  echo "== gemma window $w"
  timeout 150 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 --window $w --top 16 \
    --cases 2048@0,2560@0,3072@0,4096@0,2560@4096,3072@4096 --grid "$G" 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/gemma.log
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_tuning.py 2>&1 | tail -3 | tee $OUT/tests.log
