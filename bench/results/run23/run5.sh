#!/bin/bash
# Session 19 (run 23), H100 call 5: the final kernel. test_attention natively; 8B-head prefill
# with this kernel and with the one before (p_split.patch reversed: none of these cases splits,
# and the unsplit PTX is the same up to debug labels under Triton 3.9), interleaved; Gemma 3
# 1B-shaped Q4_K_M pp512 after 4,096 tokens, splits on / off (nosplit_table), 8 repetitions.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run23
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py 2>&1 | tail -3 | tee $OUT/tests.log
for side in new old new old; do
  [ $side = old ] && patch -s -R -p1 < $R/p_split.patch
  echo "== $side"
  timeout 80 python3 bench/bench_attention.py --only prefill --heads 32:8:128 2>&1 | grep -v "$F" | grep -E "@"
  [ $side = old ] && patch -s -p1 < $R/p_split.patch
done 2>&1 | tee $OUT/prefill_8b_ab.log
for t in split nosplit_table split nosplit_table; do
  if [ $t = split ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$R/$t.json; fi
  timeout 100 python3 -m forge.cli bench --synthetic gemma3-1b --quant Q4_K_M -p 512 -n 4 -r 8 \
    -d 4096 --json $OUT/e2e_gemma1b_${t}_$RANDOM.json 2>&1 | grep -E "\| pp" | sed "s/^/$t: /"
done 2>&1 | tee $OUT/e2e.log
