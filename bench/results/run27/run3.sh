#!/bin/bash
# Session 23 (run 27), H100 call 3: is a dropped GPU engine freed (leak.py), compile ahead off and on.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
TRITON_CACHE_DIR=/tmp/tc-l timeout 300 python3 bench/results/run27/leak.py 0,8 2>&1 | grep -v "%|" | tail -60 | tee $OUT/leak.log
