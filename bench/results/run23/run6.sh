#!/bin/bash
# Session 19 (run 23), H100 call 6, after review: the host bounds a windowed layer's split
# count by the window (p_window.patch; before it, a 512-key window after 4,096 keys launched
# 4 programs per tile, of which 3 exit at once). test_attention natively (the Gemma test now
# also splits under a 1,000-key window); Gemma 3 heads with the 512 window: this kernel, the
# kernel before the patch, and no splits.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run23
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py 2>&1 | tail -3 | tee $OUT/tests.log
for side in new before nosplit new before nosplit; do
  [ $side = before ] && patch -s -R -p1 < $R/p_window.patch
  if [ $side = nosplit ]; then export FORGE_TUNING_TABLE=$R/nosplit_table.json; else unset FORGE_TUNING_TABLE; fi
  echo "== $side"
  timeout 80 python3 bench/bench_attention.py --only prefill --heads 4:1:256 --window 512 2>&1 | grep -v "$F" | grep -E "@"
  [ $side = before ] && patch -s -p1 < $R/p_window.patch
done 2>&1 | tee $OUT/prefill_window.log
