#!/bin/bash
# Session 21 (run 25), H100 call 2: call 1's A/B again, each tree running its own bench
# (call 1's "old" rows were the new tree), Gemma 3 heads, no window / 512, eager / graph
# capacity, new-old-old-new; then the GPU tests (call 1's timed out).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export TRITON_CACHE_DIR=/tmp/triton-cache
rm -rf /tmp/old && mkdir /tmp/old && cp -r forge autotune bench /tmp/old/
(cd /tmp/old && patch -s -R -p1 < $PWD/bench/results/run25/p_kv.patch) || echo "PATCH FAILED"
grep -c kv8192 /tmp/old/forge/kernels/configs/sm90.json forge/kernels/configs/sm90.json
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING\|^#\|^$\|## prefill\|n@ctx"
C=512@0,1024@0,2048@0,512@4096,1024@4096,2048@4096
b() {  # tree, window, capacity
  PYTHONPATH=/tmp/site:$1 timeout 100 python3 $1/bench/bench_attention.py --only prefill \
    --heads 4:1:256 --window $2 --capacity $3 --cases $C 2>&1 | grep -v "$F" | sed "s|^|$1 w$2 c$3: |"
}
for w in 0 512; do
  for c in 0 32768; do
    b $PWD $w $c; b /tmp/old $w $c; b /tmp/old $w $c; b $PWD $w $c
  done
done 2>&1 | tee $OUT/attn_ab2.log
export PYTHONPATH=/tmp/site:$PWD
timeout 390 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_tuning.py tests/runtime/test_engine.py 2>&1 | tail -4 | tee $OUT/tests.log
