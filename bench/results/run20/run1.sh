#!/bin/bash
# Session 16, H100 call 1: the Q8_0 form of the shared-memory GEMV (forge/kernels/gemv_async.py).
# GPU tests (both types), then the Q8_0 launch grid at the 8B shapes against the Triton GEMV.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_gemv_async.py \
  tests/kernels/test_tuning.py -k "not shipped" 2>&1 | tail -4
timeout 400 python3 bench/gluon_gemv.py --type Q8_0 --json "$OUT/grid_q8.json" \
  --grid 1:1:4:1,1:1:6:1,1:2:4:1,2:1:3:1,2:1:4:1,2:1:6:1,2:1:8:1,2:1:4:0,2:2:4:1,2:2:6:1,4:1:3:1,4:1:4:1,4:1:6:1,4:1:4:0,4:2:4:1,1:4:4:1 \
  2>&1 | grep -v "^nanobind\| - leaked\|UserWarning\|warn_once"
