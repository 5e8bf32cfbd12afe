#!/bin/bash
# Session 17, H100 call 6: attention tests natively (GPU cases included) on the new entry; the
# decode/prefill attention table against SDPA with the shipped entry; the launcher default vs
# the entry (exact rows); pp512 @ d4096 again with the order swapped (call 5 had new first and
# read 4.5% lower pp for the new decode entry, which prefill does not use).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once"
R=bench/results/run21
OMP_NUM_THREADS=2 timeout 200 python3 -m pytest -q -p no:cacheprovider -x tests/kernels/test_attention.py 2>&1 | tail -3
timeout 120 python3 bench/bench_attention.py 2>&1 | grep -v "$F" | tee "$OUT/attention_new.log"
timeout 60 python3 bench/bench_attention.py --sweep decode --cases 1x512x8192,1x1024x8192,1x4096x8192,1x32768x32768,32x512x8192,32x4096x4096 \
  --grid "SPLITS_PER_CU=1 MAX_SPLITS=16 FUSED_REDUCE=0 BLOCK_N=64 num_stages=4 MIN_PARTITION=64" 2>&1 | grep -v "$F" | tee "$OUT/default_vs_entry.log" | grep "x  "
for i in 1 2; do
  for m in old new; do
    if [ $m = new ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/attn_A.json; fi
    timeout 100 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 32 -r 3 -d 4096 \
      --json "$OUT/pp_d4096_${m}_$i.json" 2>&1 | grep -E "\| (pp|tg)" | sed "s/^/$i $m: /"
  done
done
