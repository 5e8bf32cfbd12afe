#!/bin/bash
# Session 18 (run 22), H100 call 4: the prefill attention changes of this session
# (p_session.patch: int32 cache offsets below 2**31 elements, the softmax scale folded into one
# multiply-add on unmasked tiles, the HT key) against the kernel before them, at the three head
# shapes (Llama-3 8B 32:8:128, Llama-3.2 1B 32:8:64, Gemma 3 270M 4:1:256); a tile x HT sweep at
# d128; 8B Q4_K_M pp512 at depth 8192 new / old / new / old.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run22
for side in new old; do
  [ $side = old ] && patch -s -R -p1 < $R/p_session.patch
  for h in 32:8:128 32:8:64 4:1:256; do
    echo "== $side $h"
    timeout 100 python3 bench/bench_attention.py --only prefill --heads $h 2>&1 | grep -v "$F"
  done
  [ $side = old ] && patch -s -p1 < $R/p_session.patch
done 2>&1 | tee $OUT/prefill_new_old.log
timeout 200 python3 bench/bench_attention.py --sweep prefill --top 12 \
  --grid "BLOCK_M=128 BLOCK_N=64,128 num_warps=8 num_stages=2,3,4 HT=0,2" 2>&1 | grep -v "$F" \
  | tee $OUT/sweep_prefill_d128.log | tail -16
i=0
for side in new old new old; do
  i=$((i + 1))
  [ $side = old ] && patch -s -R -p1 < $R/p_session.patch
  timeout 120 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 16 -r 3 \
    -d 8192 --json $OUT/e2e_pp512_d8192_${i}_$side.json 2>&1 | grep -E "\| (pp|tg)" | sed "s/^/$side: /"
  [ $side = old ] && patch -s -p1 < $R/p_session.patch
done
