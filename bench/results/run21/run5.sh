#!/bin/bash
# Session 17, H100 call 5: the shipped decode attention entry (d128_g4: SPLITS_PER_CU 1,
# MAX_SPLITS 16, BLOCK_N 64, 4 stages, separate reduce) against attn_A.json (the section as it
# was) in the 8B Q4_K_M model at depth 0 / 4096 / 16384 (forge bench -d, llama-bench's depth).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
R=bench/results/run21
for d in 4096 16384 0; do
  for m in new old; do
    if [ $m = new ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/attn_A.json; fi
    timeout 150 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 128 -r 2 -d $d \
      --json "$OUT/e2e_d${d}_$m.json" 2>&1 | grep -E "\| (pp|tg)" | sed "s/^/d$d $m: /"
  done
done
