#!/bin/bash
# Session 21 (run 25), H100 call 1: attn_prefill's kv dim (p_kv.patch) at Gemma 3 heads,
# the new tree vs the tree before (the patch reversed in /tmp/old), two rounds in both orders,
# as the engine's eager steps see it (max_seq_len = the context) and as its prefill graphs do
# (--capacity 32768); then the GPU tests of attention, tuning and the engine.
# As run, this call's "old" rows were the new tree: the script ran $PWD's bench, which puts
# its own tree first on sys.path (fixed here: each tree runs its own bench; call 2 redid it).
# The tests timed out at 280 s (the log ends at 62%); call 3 ran them.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export TRITON_CACHE_DIR=/tmp/triton-cache
rm -rf /tmp/old && mkdir /tmp/old && cp -r forge autotune bench /tmp/old/
(cd /tmp/old && patch -s -R -p1 < $PWD/bench/results/run25/p_kv.patch) || echo "PATCH FAILED"
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
C=512@0,1024@0,2048@0,4096@0,512@4096,1024@4096,2048@4096
b() {  # tree, window, capacity
  PYTHONPATH=/tmp/site:$1 timeout 200 python3 $1/bench/bench_attention.py --only prefill \
    --heads 4:1:256 --window $2 --capacity $3 --cases $C 2>&1 | grep -v "$F" | sed "s|^|$1 w$2 c$3: |"
}
for round in 1 2; do
  for w in 0 512; do
    for c in 0 32768; do
      if [ $round = 1 ]; then b $PWD $w $c; b /tmp/old $w $c; else b /tmp/old $w $c; b $PWD $w $c; fi
    done
  done
done 2>&1 | tee $OUT/attn_ab.log
export PYTHONPATH=/tmp/site:$PWD
timeout 280 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_tuning.py tests/runtime/test_engine.py 2>&1 | tail -4 | tee $OUT/tests.log
