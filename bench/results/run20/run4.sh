#!/bin/bash
# Session 16, H100 call 4: ASYNC_L2 (the weights past the ring's first S - 1 steps prefetched
# into L2 before the PDL wait). GPU tests; Q4_K 4096x4096 over 13 configs x L2 0 / 1, in order and
# reversed; the other Q4_K shapes and the Q8_0 shapes over their best configs x L2 0 / 1.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F="^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_gemv_async.py 2>&1 | tail -3
timeout 100 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x4096 --json "$OUT/l2_q4k_4096_a.json" \
  --grid 2:1:4:1:0,2:1:4:1:1,2:1:4:0:0,2:1:4:0:1,2:2:3:0:0,2:2:3:0:1,2:1:3:1:0,2:1:3:1:1,2:1:5:0:0,2:1:5:0:1,2:1:6:0:0,2:1:6:0:1,2:2:4:0:0,2:2:4:0:1,4:1:4:1:0,4:1:4:1:1,4:2:3:0:0,4:2:3:0:1,2:1:2:1:0,2:1:2:1:1,2:1:3:0:0,2:1:3:0:1,2:2:2:0:0,2:2:2:0:1,8:2:3:1:0,8:2:3:1:1 2>&1 | grep -v "$F"
timeout 100 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x4096 --json "$OUT/l2_q4k_4096_b.json" \
  --grid 8:2:3:1:1,8:2:3:1:0,2:2:2:0:1,2:2:2:0:0,2:1:3:0:1,2:1:3:0:0,2:1:2:1:1,2:1:2:1:0,4:2:3:0:1,4:2:3:0:0,4:1:4:1:1,4:1:4:1:0,2:2:4:0:1,2:2:4:0:0,2:1:6:0:1,2:1:6:0:0,2:1:5:0:1,2:1:5:0:0,2:1:3:1:1,2:1:3:1:0,2:2:3:0:1,2:2:3:0:0,2:1:4:0:1,2:1:4:0:0,2:1:4:1:1,2:1:4:1:0 2>&1 | grep -v "$F"
timeout 120 python3 bench/gluon_gemv.py --type Q4_K --shapes 14336x4096,4096x14336,6144x4096,28672x4096 \
  --json "$OUT/l2_q4k.json" --grid 2:1:4:1:0,2:1:4:1:1,2:2:4:1:0,2:2:4:1:1,4:1:4:1:0,4:1:4:1:1,8:1:3:1:0,8:1:3:1:1,8:1:4:1:0,8:1:4:1:1,8:2:3:1:0,8:2:3:1:1 2>&1 | grep -v "$F"
timeout 120 python3 bench/gluon_gemv.py --type Q8_0 \
  --json "$OUT/l2_q8.json" --grid 4:2:4:1:0,4:2:4:1:1,2:2:4:1:0,2:2:4:1:1,4:4:4:1:0,4:4:4:1:1,2:4:4:1:0,2:4:4:1:1,4:2:3:1:0,4:2:3:1:1 2>&1 | grep -v "$F"
