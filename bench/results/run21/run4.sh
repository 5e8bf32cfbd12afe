#!/bin/bash
# Session 17, H100 call 4: the decode attention picks in the 8B Q4_K_M model, interleaved:
# A = the shipped attn_decode section, B = SPC 1 MAX 16 FR 0 BN 64 S 4, C = SPC 1 MAX 32 FR 1
# BN 64 S 4 (d128_g4; each a user table of the whole attn_decode section), at -p 512 and -p 4096.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
R=bench/results/run21
for p in 512 4096; do
  for m in A B C; do
    FORGE_TUNING_TABLE=$PWD/$R/attn_$m.json timeout 100 python3 -m forge.cli bench --synthetic llama3-8b \
      --quant Q4_K_M -p $p -n 128 -r 2 --json "$OUT/e2e_p${p}_$m.json" 2>&1 | grep -i "tg128" | tail -1 | sed "s/^/p$p $m: /"
  done
done
