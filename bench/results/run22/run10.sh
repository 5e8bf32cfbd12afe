#!/bin/bash
# Session 18 (run 22), H100 call 10: the rope kernel reading / writing interleaved (norm-style)
# pairs as whole rows (p_rope_rows.patch) against stride-2 loads and stores (patch reversed):
# rope_probe (8B shapes, 512 tokens), test_rope natively, 8B and 1B Q4_K_M pp512 new / old.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run22
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_rope.py 2>&1 | tail -2 | tee $OUT/rope_tests.log
for side in new old new old; do
  [ $side = old ] && patch -s -R -p1 < $R/p_rope_rows.patch
  echo "$side: $(timeout 60 python3 $R/rope_probe.py 2>&1 | grep -v "$F" | tail -1)"
  [ $side = old ] && patch -s -p1 < $R/p_rope_rows.patch
done 2>&1 | tee $OUT/rope_ab.log
for shape in llama3-8b llama3.2-1b; do
  for side in new old; do
    [ $side = old ] && patch -s -R -p1 < $R/p_rope_rows.patch
    timeout 100 python3 -m forge.cli bench --synthetic $shape --quant Q4_K_M -p 512 -n 8 -r 5 \
      --json $OUT/e2e_rope_${shape}_$side.json 2>&1 | grep -E "\| pp" | sed "s/^/$shape $side: /"
    [ $side = old ] && patch -s -p1 < $R/p_rope_rows.patch
  done
done
