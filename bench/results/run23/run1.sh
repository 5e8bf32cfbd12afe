#!/bin/bash
# Session 19 (run 23), H100 call 1: split-KV prefill attention (KV_SPLITS / KV_SPLIT_MIN).
# Attention tests natively; bench_attention --only prefill at Gemma 3 heads with the shipped
# table (splits on) and with nosplit_table.json (the same entries, KV_SPLITS 1), then at 8B
# and 1B heads (no case of theirs splits: a check that nothing moved).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run23
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py 2>&1 | tail -4 | tee $OUT/tests.log
for side in split nosplit split nosplit; do
  if [ $side = nosplit ]; then export FORGE_TUNING_TABLE=$R/nosplit_table.json; else unset FORGE_TUNING_TABLE; fi
  echo "== $side"
  timeout 120 python3 bench/bench_attention.py --only prefill --heads 4:1:256 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/prefill_gemma.log
unset FORGE_TUNING_TABLE
for h in 32:8:128 32:8:64; do
  timeout 90 python3 bench/bench_attention.py --only prefill --heads $h 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/prefill_llama.log
# the same at 8B heads with the kernel before this change (p_split.patch reversed): new / old
patch -s -R -p1 < $R/p_split.patch
echo "== old kernel, 32:8:128"
timeout 90 python3 bench/bench_attention.py --only prefill --heads 32:8:128 2>&1 | grep -v "$F" | tee -a $OUT/prefill_llama.log
patch -s -p1 < $R/p_split.patch
