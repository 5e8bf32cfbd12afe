#!/bin/bash
# Session 17, H100 call 10: with the new d128 split scheme, does the rope fused into decode
# attention pay at batch 1 now? (ROPE_MIN_B 2 kept batch 1 on the separate rope kernel: fused
# measured 375.7 vs 382.2 in session 8.) attn_rope1.json = the shipped section with d128_g4
# ROPE_MIN_B 1; 8B Q4_K_M tg128 at depth 0 and 4096, two rounds interleaved.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
R=bench/results/run21
for d in 0 4096; do
  for i in 1 2; do
    for m in shipped rope1; do
      if [ $m = shipped ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/attn_rope1.json; fi
      timeout 90 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 128 -r 3 -d $d \
        2>&1 | grep -E "\| tg" | sed "s/^/d$d $i $m: /"
    done
  done
done
