#!/bin/bash
# Session 20 (run 24), H100 call 2: call 1's Gemma 3 sweep again after two changes: the split
# count keeps the grid within one wave (num_cus // programs, was a ceiling division) and the
# split merge goes 64 rows at a time (128-row tiles at d256 no longer spill with SPLIT).
# Then test_attention natively.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
G="BLOCK_M=64,128 BLOCK_N=32,64 num_warps=8 num_stages=2,3 SINGLE_LOOP=0,1 HT=0 QK_CHUNK=0"
for w in 0 512; do
  echo "== gemma window $w"
  timeout 200 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 --window $w --top 16 \
    --cases 512@0,1024@0,2048@0,4096@0,8192@0,512@4096,1024@4096,2048@4096 --grid "$G" 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/gemma.log
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py 2>&1 | tail -4 | tee $OUT/tests.log
