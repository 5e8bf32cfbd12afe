#!/bin/bash
# Session 20 (run 24), H100 call 3: the split rule as shipped (one wave below half the CUs, two
# splits above); Gemma 3 heads, 64x64 vs 128-row tiles over token counts, both windows; 1B
# heads (d64), 64x128 vs 128x128 at 4096+ tokens; then bench_attention --only prefill with the
# shipped tables (the new t buckets) against the tree before this change (p_tbucket.patch
# reversed: d_g buckets, the ceiling split rule, the whole-tile merge), interleaved; tests.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run24
G="BLOCK_M=64,128 BLOCK_N=32,64 num_warps=8 num_stages=3 SINGLE_LOOP=0 HT=0 QK_CHUNK=0"
for w in 0 512; do
  echo "== gemma window $w"
  timeout 150 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 --window $w --top 16 \
    --cases 512@0,1024@0,2048@0,4096@0,8192@0,512@4096,1024@4096,2048@4096 --grid "$G" 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/gemma.log
echo "== 1B heads" | tee $OUT/d64.log
timeout 120 python3 bench/bench_attention.py --sweep prefill --heads 32:8:64 --top 16 \
  --cases 1024@0,2048@0,4096@0,8192@0,1024@4096,4096@4096 \
  --grid "BLOCK_M=64,128 BLOCK_N=128 num_warps=4 num_stages=3" 2>&1 | grep -v "$F" | tee -a $OUT/d64.log
for side in new old new old; do
  if [ $side = old ]; then patch -s -R -p1 < $R/p_tbucket.patch; fi
  for h in 4:1:256 32:8:128 32:8:64; do
    echo "== $side $h"
    timeout 60 python3 bench/bench_attention.py --only prefill --heads $h 2>&1 | grep -v "$F" | grep -E "@|sdpa"
  done
  echo "== $side 4:1:256 window 512"
  timeout 60 python3 bench/bench_attention.py --only prefill --heads 4:1:256 --window 512 2>&1 | grep -v "$F" | grep -E "@|sdpa"
  if [ $side = old ]; then patch -s -p1 < $R/p_tbucket.patch; fi
done 2>&1 | tee $OUT/ab.log
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py -k "prefill or split or gemma" 2>&1 | tail -3 | tee $OUT/tests.log
