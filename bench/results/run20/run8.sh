#!/bin/bash
# Session 16, H100 call 8: 8B Q4_K_M decode, the shipped table (down ASYNC 3 BN 4 W 2, qkv BN 8)
# against q4_prev_full.json (the whole shipped section with down and qkv as before this session:
# BN 2 W 2 S 4 and BN 4 W 1 S 4), three rounds interleaved (call 7 had one round each).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
R=bench/results/run20
for i in 1 2 3; do
  for mode in shipped prev; do
    if [ $mode = shipped ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/q4_prev_full.json; fi
    timeout 80 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 128 -r 3 \
      --json "$OUT/e2e8_${mode}_$i.json" 2>&1 | grep -i "tg128" | tail -1 | sed "s/^/$mode $i: /"
  done
done
