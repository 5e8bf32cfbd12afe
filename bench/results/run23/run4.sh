#!/bin/bash
# Session 19 (run 23), H100 call 4: the merge reads whole partial tiles (no 16-row chunks).
# bench_attention at Gemma 3 heads, without and with the 512-key sliding window of its local
# layers, per table (tA: the shipped 64x64 entry, tB: 128x64 SINGLE_LOOP, nosplit: tA with
# KV_SPLITS 1); then KV_SPLIT_MIN 256 / 512 against no splits at 64x64.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run23
for w in 0 512; do for t in tA_64x64 tB_128x64_sl nosplit_table; do
  echo "== $t window $w"
  FORGE_TUNING_TABLE=$R/$t.json timeout 80 python3 bench/bench_attention.py --only prefill --heads 4:1:256 --window $w 2>&1 | grep -v "$F" | grep -E "@|sdpa"
done; done 2>&1 | tee $OUT/prefill_tables.log
timeout 150 python3 bench/bench_attention.py --sweep prefill --heads 4:1:256 \
  --cases 512@0,512@1024,512@4096,2048@0 --top 12 \
  --grid "BLOCK_M=64 BLOCK_N=64 num_warps=8 num_stages=3 KV_SPLITS=1,16 KV_SPLIT_MIN=256,512" 2>&1 \
  | grep -v "$F" | tee $OUT/sweep_splits.log
